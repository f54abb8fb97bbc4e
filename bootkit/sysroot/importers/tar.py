"""Importing a tar archive (plain, gzip, xz, bzip2 or zstd) as one stream."""

from __future__ import annotations

import gzip
import lzma
import os
import stat
import tarfile
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path, PurePosixPath
from typing import IO

from bootkit.base import process
from bootkit.base.filetypes import FileType
from bootkit.errors import BootkitError
from bootkit.sysroot.importers.tarheaders import BoundedTarInfo
from bootkit.sysroot.importers.tarmembers import (
    IMPLICIT_DIR_MODE as IMPLICIT_DIR_MODE,
)
from bootkit.sysroot.importers.tarmembers import (
    MEMBER_TYPES,
    ZSTD_MAGIC,
    escapes,
    format_bits,
    implicit_dir,
    member_content,
    member_path,
    pax_xattrs,
)
from bootkit.sysroot.importers.tree import (
    IMPORT_ERRORS,
    ImportReport,
    Progress,
    TreeBuilder,
    import_error,
)
from bootkit.sysroot.store import FileMeta, ObjectStore


class _CountingReader:
    def __init__(self, f: IO[bytes], progress: Progress) -> None:
        self.f = f
        self.progress = progress

    def read(self, n: int = -1) -> bytes:
        data = self.f.read(n)
        self.progress(len(data))
        return data


@contextmanager
def _open_tar_stream(src: Path, progress: Progress) -> Iterator[tarfile.TarFile]:
    with open(src, "rb") as raw:
        magic = raw.read(4)
        raw.seek(0)
        counted = _CountingReader(raw, progress)
        if magic != ZSTD_MAGIC:
            with tarfile.open(fileobj=counted, mode="r|*",  # type: ignore[call-overload]
                              tarinfo=BoundedTarInfo) as tf:
                yield tf
            return
        # Python's tarfile cannot read zstd; the zstd program decompresses it on the way.
        with process.filtered(
            ["zstd", "-dcq"], f"decompressing {src}", counted,
            hint="the archive may be truncated or corrupt",
        ) as out, tarfile.open(fileobj=out, mode="r|", tarinfo=BoundedTarInfo) as tf:
            yield tf


class TarSource:
    """A tar archive of a root tree, read as one stream (plain, gzip, xz, bzip2 or zstd).

    Every member is checked before it is written: no absolute paths, no '..', no
    symlink that leads out of the tree or is written through, no hardlink to
    anything but an earlier file, no path twice. Device nodes and fifos are skipped.
    A directory the archive holds members of but does not list is made 0755, owned
    by root (see IMPLICIT_DIR_MODE).
    """

    def __init__(self, archive: Path) -> None:
        self.archive = archive
        self.label = archive.name
        self.origin = str(archive.resolve())

    def size(self) -> int:
        """The archive's bytes as stored, which is what the stream counts."""
        return self.archive.stat().st_size

    def import_into(
        self, dest: Path, store: ObjectStore, progress: Progress, dropped: frozenset[str]
    ) -> ImportReport:
        """Import into `dest` (created). A stream is read whole, `dropped` names included."""
        dest.mkdir()
        return _TarImport(self.archive, dest, store, progress).run()

    def imported(self) -> None:
        """Nothing to keep: an archive is read whole every time."""


class _TarImport:
    """One pass over an archive's members into a new tree."""

    def __init__(self, archive: Path, dest: Path, store: ObjectStore, progress: Progress) -> None:
        self.archive = archive
        self.dest = dest
        self.tree = TreeBuilder(dest, store, progress)
        # Regular files so far, for hardlinks to name: their metadata and size.
        self.seen_files: dict[PurePosixPath, tuple[FileMeta, int]] = {}
        self.known_dirs: set[str] = set()
        self.spool = os.path.join(store.tmp, f"member.{os.getpid()}")

    def run(self) -> ImportReport:
        # The root, until a member names it (see IMPLICIT_DIR_MODE). An archive's root
        # has never been part of its notes, so that ids stay what they were.
        self.tree.add_dir(".", implicit_dir(self.archive.stat().st_mtime), noted=False)
        try:
            with _open_tar_stream(self.archive, self.tree.progress) as tf:
                for member in tf:
                    self.add_checked(member, tf)
        except (tarfile.TarError, EOFError, zlib.error, lzma.LZMAError, gzip.BadGzipFile) as err:
            raise BootkitError(
                f"{self.archive} is not a readable tar archive: {err}",
                hint="check the file; it may be truncated or corrupt",
            ) from None
        return self.tree.finish()

    def add_checked(self, m: tarfile.TarInfo, tf: tarfile.TarFile) -> None:
        """Add one member; what the filesystem refuses about it is refused by name."""
        try:
            self.add(m, tf)
        except gzip.BadGzipFile:
            raise  # the archive's fault, not this member's
        except IMPORT_ERRORS as err:
            raise import_error(f"tar member {m.name!r}", err) from None

    def add(self, m: tarfile.TarInfo, tf: tarfile.TarFile) -> None:
        rel = member_path(m.name)
        kind = MEMBER_TYPES.get(m.type)  # None: a hardlink, or a type unknown to tar
        meta = FileMeta(m.mode | format_bits(kind), m.uid, m.gid, pax_xattrs(m), float(m.mtime))
        if str(rel) == ".":
            if kind is FileType.DIR:
                self.tree.add_dir(".", meta)
            return
        self.check_parents(rel, m)
        _check_new(self.dest, rel, m)
        if kind is FileType.DIR:
            self.tree.add_dir(str(rel), meta)
        elif kind is FileType.SYMLINK:
            self.add_symlink(rel, m, meta)
        elif m.islnk():
            self.add_hardlink(rel, m)
        elif kind is FileType.FILE:
            self.add_file(rel, m, meta, tf)
        else:
            self.tree.skip(str(rel), kind.description if kind else "special file")

    def check_parents(self, rel: PurePosixPath, m: tarfile.TarInfo) -> None:
        """Refuse a member whose parent directories are symlinks or files; make those that
        are missing, as implicit directories (see IMPLICIT_DIR_MODE).

        `known_dirs` holds the parents checked already: a directory stays one, since no
        later member may take a path that exists (see _check_new).
        """
        parent = str(rel.parent)
        if parent == "." or parent in self.known_dirs:
            return
        done = ""
        for part in rel.parent.parts:
            done = f"{done}/{part}" if done else part
            if done in self.known_dirs:
                continue
            try:
                st = os.lstat(f"{self.dest}/{done}")
            except FileNotFoundError:
                self.tree.add_dir(done, implicit_dir(m.mtime))
            else:
                if not stat.S_ISDIR(st.st_mode):
                    raise BootkitError(
                        f"tar member {m.name!r} would be written through {done}, "
                        "which is not a directory",
                        hint="the archive may be malicious; rebuild it",
                    )
            self.known_dirs.add(done)

    def add_symlink(self, rel: PurePosixPath, m: tarfile.TarInfo, meta: FileMeta) -> None:
        if escapes(rel, m.linkname):
            raise BootkitError(
                f"tar member {m.name!r} is a symlink that escapes the tree ({m.linkname!r})",
                hint="the archive may be malicious; rebuild it",
            )
        self.tree.add_symlink(str(rel), m.linkname, meta)

    def add_hardlink(self, rel: PurePosixPath, m: tarfile.TarInfo) -> None:
        target = member_path(m.linkname)
        if target not in self.seen_files:
            raise BootkitError(
                f"tar member {m.name!r} is a hardlink to {m.linkname!r}, which is not an earlier file in the archive",
                hint="the archive may be malicious or truncated",
            )
        meta, size = self.seen_files[target]
        self.tree.add_hardlink(str(rel), str(target), meta, size)
        self.seen_files[rel] = (meta, size)

    def add_file(
        self, rel: PurePosixPath, m: tarfile.TarInfo, meta: FileMeta, tf: tarfile.TarFile
    ) -> None:
        # Checked before a byte is written: a sparse member may declare far more than it holds.
        self.tree.space.claim(f"tar member {m.name!r}", m.size)
        f = tf.extractfile(m)
        assert f is not None
        with member_content(f, m.size, meta, self.spool) as (digest, fill):
            self.tree.add_file(str(rel), meta, digest, fill, m.size)
        self.seen_files[rel] = (meta, m.size)


def _check_new(dest: Path, rel: PurePosixPath, m: tarfile.TarInfo) -> None:
    """Refuse a member whose path an earlier member already took (a directory may repeat)."""
    try:
        st = (dest / rel).lstat()
    except FileNotFoundError:
        return
    if not (m.isdir() and stat.S_ISDIR(st.st_mode)):
        raise BootkitError(
            f"tar member {m.name!r} appears more than once in the archive",
            hint="rebuild the archive with each path once",
        )

