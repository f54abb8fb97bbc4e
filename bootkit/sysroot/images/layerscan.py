"""One pass over a layer's members: each checked by the rules of the tar importer, its
files stored as objects of the content store, what it holds noted for its record."""

from __future__ import annotations

import functools
import os
import stat
import tarfile
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path, PurePosixPath

from bootkit.base.filetypes import FileType
from bootkit.errors import BootkitError
from bootkit.sysroot.images.layerrecord import MAX_ENTRIES, MAX_RECORD, LayerEntry, LayerRecord
from bootkit.sysroot.importers.tarmembers import (
    IN_MEMORY,
    MEMBER_TYPES,
    escapes,
    member_content,
    member_path,
    pax_xattrs,
)
from bootkit.sysroot.importers.tree import IMPORT_ERRORS, FreeSpace, import_error
from bootkit.sysroot.store import ObjectStore, object_key

WHITEOUT = ".wh."
OPAQUE = ".wh..wh..opq"
_HOSTILE = "the image may be malicious; ask its publisher to rebuild it"


class Writers:
    """Stores files on threads of their own while the layer is read on: making a file is
    mostly waiting for the filesystem, which several threads can do at once. At most
    `window` files wait, each at most IN_MEMORY bytes."""

    def __init__(self, workers: int = 4, window: int = 64) -> None:
        self.pool = ThreadPoolExecutor(workers, thread_name_prefix="bootkit-store")
        self.window = window
        self.pending: deque[Future[None]] = deque()

    def submit(self, store: Callable[[], object], what: str) -> None:
        self.pending.append(self.pool.submit(_named, store, what))
        while len(self.pending) > self.window:
            self.pending.popleft().result()

    def finish(self) -> None:
        """Wait for every file; the first failure is raised."""
        while self.pending:
            self.pending.popleft().result()

    def close(self) -> None:
        """Wait for the threads, whatever they did: the caller removes what they wrote to."""
        self.pool.shutdown(wait=True, cancel_futures=True)


def _named(store: Callable[[], object], what: str) -> None:
    try:
        store()
    except IMPORT_ERRORS as err:
        raise import_error(what, err) from None


class LayerScan:
    """What one layer holds, gathered member by member into the temp layer dir `tmp`."""

    def __init__(self, diff_id: str, store: ObjectStore, tmp: Path) -> None:
        self.diff_id = diff_id
        self.store = store
        self.objects = str(tmp / "objects")
        self.space = FreeSpace(tmp)
        self.spool = os.path.join(store.tmp, f"layer.{os.getpid()}")
        self.entries: list[LayerEntry] = []
        self.index: dict[str, int] = {}  # path: its place in entries
        self.implied: set[str] = set()  # directories the layer's paths go through
        # Insertion-ordered sets: a marker given twice counts once.
        self.whiteouts: dict[str, None] = {}
        self.opaque: dict[str, None] = {}
        self.keys: set[str] = set()  # objects linked into the layer dir
        self.writers = Writers()
        self.size = 0  # about what the record will take

    def record(self) -> LayerRecord:
        self.writers.finish()
        return LayerRecord(self.diff_id, tuple(self.entries), tuple(self.whiteouts),
                           tuple(self.opaque))

    def add_checked(self, m: tarfile.TarInfo, tf: tarfile.TarFile) -> None:
        """Add one member; what the filesystem refuses about it is refused by name."""
        try:
            self.add(m, tf)
        except IMPORT_ERRORS as err:
            raise import_error(f"member {m.name!r} of layer {self.diff_id}", err) from None
        # Bounded here, while it is read, not when a record too large for memory is made.
        self.size += 64 + len(m.name) + len(m.linkname) + sum(
            len(k) + len(v) for k, v in m.pax_headers.items())
        if len(self.entries) + len(self.whiteouts) > MAX_ENTRIES or self.size > MAX_RECORD:
            raise BootkitError(f"layer {self.diff_id} has more entries than any OS needs",
                               hint=_HOSTILE)

    def add(self, m: tarfile.TarInfo, tf: tarfile.TarFile) -> None:
        rel = member_path(m.name, rooted=True)
        if rel.name.startswith(WHITEOUT):
            self.check_parents(rel, m)
            self.add_marker(rel, m)
            return
        kind = MEMBER_TYPES.get(m.type)  # None: a hardlink, or a type unknown to tar
        path = str(rel)
        if path == ".":
            if kind is FileType.DIR:
                self.put(self.entry(path, "d", m))
            return
        self.check_parents(rel, m)
        self.check_new(path, kind, m)
        if kind is FileType.DIR:
            self.put(self.entry(path, "d", m))
        elif kind is FileType.SYMLINK:
            if escapes(rel, m.linkname):
                raise BootkitError(
                    f"layer member {m.name!r} is a symlink that escapes the tree "
                    f"({m.linkname!r})", hint=_HOSTILE)
            self.put(self.entry(path, "l", m, target=m.linkname))
        elif m.islnk():
            self.add_hardlink(path, m)
        elif kind is FileType.FILE:
            self.add_file(path, m, tf)
        else:
            self.put(self.entry(path, "s", m, target=kind.value if kind else ""))

    def entry(self, path: str, kind: str, m: tarfile.TarInfo, **more: object) -> LayerEntry:
        return LayerEntry(path, kind, stat.S_IMODE(m.mode), m.uid, m.gid, float(m.mtime),
                          pax_xattrs(m), **more)  # type: ignore[arg-type]

    def put(self, entry: LayerEntry) -> None:
        known = self.index.get(entry.path)
        if known is None:
            self.index[entry.path] = len(self.entries)
            self.entries.append(entry)
        else:
            self.entries[known] = entry  # a directory named again takes the latest metadata

    def add_marker(self, rel: PurePosixPath, m: tarfile.TarInfo) -> None:
        """A whiteout (`.wh.NAME`) or opaque marker; other `.wh..wh.` names, which some
        layer writers leave for their own use, mean nothing to the tree."""
        parent = str(rel.parent)
        if rel.name == OPAQUE:
            self.opaque[parent] = None
            self.implied.add(parent)
        elif not rel.name.startswith(WHITEOUT + WHITEOUT):
            name = rel.name[len(WHITEOUT) :]
            if name in ("", ".", ".."):
                raise BootkitError(f"layer member {m.name!r} is a whiteout of no name",
                                   hint=_HOSTILE)
            self.whiteouts[name if parent == "." else f"{parent}/{name}"] = None

    def check_parents(self, rel: PurePosixPath, m: tarfile.TarInfo) -> None:
        """Refuse a member below another member of this layer that is not a directory."""
        done = ""
        for part in rel.parent.parts:
            done = f"{done}/{part}" if done else part
            known = self.index.get(done)
            if known is not None and self.entries[known].kind != "d":
                raise BootkitError(
                    f"layer member {m.name!r} would be written through {done}, which is "
                    "not a directory", hint=_HOSTILE)
            self.implied.add(done)

    def check_new(self, path: str, kind: FileType | None, m: tarfile.TarInfo) -> None:
        """Refuse a path that an earlier member took (a directory may repeat)."""
        is_dir = kind is FileType.DIR
        known = self.index.get(path)
        if known is not None and not (is_dir and self.entries[known].kind == "d"):
            raise BootkitError(f"layer member {m.name!r} appears more than once in the layer",
                               hint=_HOSTILE)
        if path in self.implied and not is_dir:
            raise BootkitError(
                f"layer member {m.name!r} is not a directory, but earlier members are "
                "inside it", hint=_HOSTILE)

    def add_hardlink(self, path: str, m: tarfile.TarInfo) -> None:
        """A hardlink to an earlier file of this layer, or else to a file of the layers
        below, which only the merge knows (see `merge`)."""
        target = str(member_path(m.linkname, rooted=True))
        known = self.index.get(target)
        if (known is not None and self.entries[known].kind not in "fh") or (
            known is None and target in self.implied
        ) or target in (".", path):
            raise BootkitError(
                f"layer member {m.name!r} is a hardlink to {m.linkname!r}, which is not a "
                "regular file", hint=_HOSTILE)
        self.put(self.entry(path, "h", m, target=target))

    def add_file(self, path: str, m: tarfile.TarInfo, tf: tarfile.TarFile) -> None:
        # Checked before a byte is written: a sparse member may declare far more than it holds.
        self.space.claim(f"layer member {m.name!r}", m.size)
        # Its metadata checked before a byte is stored; the hash is known only after.
        entry = self.entry(path, "f", m, sha256="0" * 64, size=m.size)
        meta = entry.meta()
        f = tf.extractfile(m)
        assert f is not None
        with member_content(f, m.size, meta, self.spool) as (digest, fill):
            key = object_key(digest, meta)
            if key not in self.keys:  # the same file twice in a layer is one object
                self.keys.add(key)
                store = functools.partial(self.store.link_into, key, f"{self.objects}/{key}", fill)
                if m.size <= IN_MEMORY:
                    self.writers.submit(store, f"member {m.name!r} of layer {self.diff_id}")
                else:
                    store()  # from the spool, which the next large member reuses
        self.put(LayerEntry(path, "f", entry.mode, entry.uid, entry.gid, entry.mtime,
                            entry.xattrs, digest, m.size))
