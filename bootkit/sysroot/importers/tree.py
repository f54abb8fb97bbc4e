"""The new deployment tree as an importer builds it, and what identifies its content."""

from __future__ import annotations

import hashlib
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from bootkit.base.seen import copy_fd
from bootkit.errors import BootkitError, from_os_error
from bootkit.sysroot.contentdigest import both_digests
from bootkit.sysroot.store import (
    FileMeta,
    ObjectStore,
    apply_meta,
    create_file,
    dedup_eligible,
    object_key,
)

Progress = Callable[[int], None]
# What a file's import may fail with because of what the source holds.
IMPORT_ERRORS = (OSError, ValueError, OverflowError)


def import_error(what: str, err: Exception) -> BootkitError:
    """One line for a file of the source that could not be imported, naming it."""
    if isinstance(err, OSError):
        return BootkitError(f"cannot import {what}: {err.strerror or err}",
                            hint=from_os_error(err).hint)
    return BootkitError(f"cannot import {what}: {err}",
                        hint="the source may be malicious or corrupt; check how it was made")


def same_area(rel: str, target: str) -> bool:
    """Whether two names of a tree may be one inode (a hardlink).

    Files under usr/ may be objects of the store, shared by every deployment; var/
    becomes the /var all deployments share; etc/ becomes usr/etc. A link across two
    such places would let a write to one reach the other (the shared /var into the
    store), so only names below the same top-level directory share an inode.
    """
    return "/" in rel and rel.split("/", 1)[0] == target.split("/", 1)[0]


def _in_var(rel: str) -> bool:
    return rel == "var" or rel.startswith("var/")


def _size(n: int) -> str:
    return f"{n / (1 << 30):.1f} GiB" if n >= 1 << 30 else f"{n / (1 << 20):.1f} MiB"


class FreeSpace:
    """Refuses a file the filesystem has no room for, before it is written. Thread-safe.

    Free space is read again only once the files claimed since the last reading would
    use it up, so a tree of many small files costs few statvfs calls.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.left = 0
        self.lock = threading.Lock()

    def claim(self, what: str, size: int) -> None:
        with self.lock:
            if size > self.left:
                st = os.statvfs(self.path)
                self.left = st.f_bavail * st.f_frsize
                if size > self.left:
                    raise BootkitError(
                        f"{what} is {_size(size)}, but the sysroot has {_size(self.left)} free",
                        hint="free some space on it ('bootkit cleanup' removes old deployments); "
                        "a small archive that declares a huge file may be malicious",
                    )
            self.left -= size


# A note (see contentdigest), encoded: `bytes`, which a field of ImportReport hides there.
EncodedNote = bytes


@dataclass
class ImportReport:
    files: int = 0
    bytes: int = 0
    linked: int = 0  # files that reused an object already stored
    skipped: list[str] = field(default_factory=list)  # device nodes, sockets, fifos
    digest: str = ""  # identifies the tree's content (in its deployment's id)
    content_digest: str = ""  # the same for the same tree from any source (see contentdigest)
    os_digest: str = ""  # the same, without /etc: what fsck checks a deployment's tree against
    # What the digests were made from, one line per entry (see contentdigest), encoded:
    # a deploy that changes the tree after the import makes os_digest again from them.
    notes: list[EncodedNote] = field(default_factory=list, repr=False)


class TreeBuilder:
    """Builds the new tree; paths are plain strings here, as this runs once per file."""

    def __init__(self, dest: Path, store: ObjectStore, progress: Progress) -> None:
        self.dest = str(dest)
        self.store = store
        self.progress = progress
        self.report = ImportReport()
        store.prepare()
        self.space = FreeSpace(dest)
        # What identifies the tree, one line per entry, in walk order; kept encoded, as
        # one object each: a tree may have millions of entries.
        self.notes: list[bytes] = []
        self.dir_meta: list[tuple[str, FileMeta]] = []
        self.dirs: dict[str, tuple[int, int | None]] = {}  # rel: index in dir_meta, note slot
        self.var_files: dict[str, str] = {}  # what the notes would say of /var's files

    def _note(self, rel: str, what: str, slot: int | None = None) -> None:
        # /var is handed to the shared /var or dropped, so it is no part of the tree's identity.
        if _in_var(rel):
            if what.startswith("f"):
                self.var_files[rel] = what  # for a hardlink to it from outside /var
            return
        note = f"{rel}\0{what}\n".encode("utf-8", "surrogateescape")
        if slot is None:
            self.notes.append(note)
        else:
            self.notes[slot] = note

    def reserve_note(self) -> int:
        """A place in the walk order for an entry whose note comes later."""
        self.notes.append(b"")
        return len(self.notes) - 1

    def skip(self, rel: str, kind: str) -> None:
        self.report.skipped.append(f"/{rel} ({kind})")

    def add_dir(self, rel: str, meta: FileMeta, *, noted: bool = True) -> None:
        """Add directory `rel` (with a note unless not `noted`); named again (a tar member
        after the implicit parent of an earlier one, or twice), it takes the metadata
        named last, as with tar."""
        path = f"{self.dest}/{rel}"
        what = f"d{meta.mode:o}:{meta.uid}:{meta.gid}"
        known = self.dirs.get(rel)
        if known is not None:
            index, slot = known
            self.dir_meta[index] = (path, meta)
            if slot is not None:
                self._note(rel, what, slot)
            return
        if rel != ".":
            os.mkdir(path, 0o700)
        # Modes are applied at the end: a read-only directory must still take its children.
        self.dir_meta.append((path, meta))
        if noted and not _in_var(rel):
            self.dirs[rel] = (len(self.dir_meta) - 1, len(self.notes))
            self._note(rel, what)
        else:
            self.dirs[rel] = (len(self.dir_meta) - 1, None)

    def add_symlink(self, rel: str, target: str, meta: FileMeta) -> None:
        path = f"{self.dest}/{rel}"
        os.symlink(target, path)
        apply_meta(path, meta, symlink=True)
        self._note(rel, f"l{target}")

    def store_file(
        self, rel: str, meta: FileMeta, content_hash: str, fill: Callable[[str], None]
    ) -> bool:
        """Put one regular file in place; True if it reused a stored object. Thread-safe.

        `fill(path)` makes the new file at `path` with its content and `meta` (see
        `store.create_file`)."""
        path = f"{self.dest}/{rel}"
        if dedup_eligible(rel):
            return self.store.link_into(object_key(content_hash, meta), path, fill)
        fill(path)
        return False

    def link_stored(self, rel: str, meta: FileMeta, content_hash: str) -> bool:
        """Link the stored object of this content and metadata to `rel`, when there is
        one that takes another link; False leaves `rel` to `store_file`."""
        return self.store.link_existing(object_key(content_hash, meta), f"{self.dest}/{rel}")

    def count_file(
        self,
        rel: str,
        meta: FileMeta,
        content_hash: str,
        size: int,
        linked: bool,
        slot: int | None = None,
    ) -> None:
        self.report.files += 1
        self.report.bytes += size
        self.report.linked += linked
        self._note(rel, f"f{content_hash}:{meta.mode:o}:{meta.uid}:{meta.gid}", slot)

    def add_file(
        self,
        rel: str,
        meta: FileMeta,
        content_hash: str,
        fill: Callable[[str], None],
        size: int,
    ) -> None:
        linked = self.store_file(rel, meta, content_hash, fill)
        self.count_file(rel, meta, content_hash, size, linked)

    def add_hardlink(self, rel: str, target: str, meta: FileMeta, size: int) -> None:
        """`rel` is the earlier file `target` (with `meta`, `size` bytes) once more: a
        hardlink to it, or a copy where the two are not in the same area (see same_area)."""
        src, dst = os.path.join(self.dest, target), os.path.join(self.dest, rel)
        if same_area(rel, target):
            os.link(src, dst)
        else:
            self.space.claim(rel, size)
            with open(src, "rb") as f:
                create_file(dst, meta, lambda fd: copy_fd(f.fileno(), fd))
        self.note_hardlink(rel, target)

    def note_hardlink(self, rel: str, target: str) -> None:
        """The note of `rel`, another name of the earlier file `target`."""
        # A link to a file of /var, which has no note: this name notes the file itself.
        self._note(rel, self.var_files.get(target, f"h{target}"))

    def finish(self) -> ImportReport:
        for path, meta in reversed(self.dir_meta):
            apply_meta(path, meta)
        tree_hash = hashlib.sha256()
        for note in self.notes:
            tree_hash.update(note)
        self.report.digest = tree_hash.hexdigest()
        self.report.content_digest, self.report.os_digest = both_digests(self.notes)
        self.report.notes = self.notes
        return self.report
