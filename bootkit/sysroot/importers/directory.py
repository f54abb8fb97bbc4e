"""Importing a directory tree: a sorted walk, with regular files read by a thread pool."""

from __future__ import annotations

import collections
import contextlib
import hashlib
import itertools
import os
import stat
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from bootkit.base.filetypes import FileType
from bootkit.base.seen import (
    FileChanged,
    copy_verified,
    entry_path,
    open_seen,
    read_all,
    sha256_of,
)
from bootkit.base.xattrs import Xattrs, read_xattrs
from bootkit.sysroot.hashcache import HashCache
from bootkit.sysroot.importers.tree import (
    IMPORT_ERRORS,
    ImportReport,
    Progress,
    TreeBuilder,
    import_error,
)
from bootkit.sysroot.store import FileMeta, ObjectStore, create_file, dedup_eligible


def _meta_of(what: str | int, st: os.stat_result) -> FileMeta:
    return FileMeta(st.st_mode, st.st_uid, st.st_gid, read_xattrs(what), st.st_mtime)


def _dir_meta(path: str, seen: os.stat_result) -> FileMeta:
    """A directory's metadata, read through a descriptor of the directory the walk saw."""
    with open_seen(path, seen) as fd:
        return _meta_of(fd, os.fstat(fd))


@dataclass(frozen=True)
class _Link:
    """A symlink, read with its directory's listing: nothing to open later."""

    target: str
    meta: FileMeta


# One entry of a directory: name, lstat, and what a symlink is, a regular file's
# extended attributes, or a directory's metadata.
_Entry = tuple[str, os.stat_result, _Link | Xattrs | FileMeta | None]


def _listing(path: str, seen: os.stat_result) -> tuple[FileMeta, list[_Entry]]:
    """The metadata of directory `path` and its entries, sorted by name; FileChanged
    unless `path` is still the directory the walk saw (not a symlink put in its place).

    Both come from one descriptor of the directory. A regular file's extended
    attributes are read here too, by name in the directory held open: a file whose
    hash the cache knows is then linked without being opened."""
    with open_seen(path, seen) as fd:
        meta = _meta_of(fd, os.fstat(fd))
        found: list[_Entry] = []
        for name in sorted(os.listdir(fd)):
            st = os.stat(name, dir_fd=fd, follow_symlinks=False)
            extra: _Link | Xattrs | None = None
            if stat.S_ISLNK(st.st_mode):
                extra = _Link(os.readlink(name, dir_fd=fd), _meta_of(entry_path(fd, name), st))
            elif stat.S_ISREG(st.st_mode):
                extra = read_xattrs(entry_path(fd, name))
            found.append((name, st, extra))
        return meta, found


def _walk(src: str, rel: str, entries: list[_Entry], prune: frozenset[str]) -> Iterator[_Entry]:
    """(rel, lstat, what `_listing` read) of everything below the directory `rel`, whose
    `entries` are given, parents first. A directory comes with its metadata, unless
    it is pruned (then it is not opened at all)."""
    for name, st, extra in entries:
        child = f"{rel}/{name}" if rel else name
        if not stat.S_ISDIR(st.st_mode) or child in prune:
            yield child, st, extra
            continue
        try:
            meta, below = _listing(f"{src}/{child}", st)
        except IMPORT_ERRORS as err:
            raise import_error(f"{child} from {src}", err) from None
        yield child, st, meta
        yield from _walk(src, child, below, prune)


# Files up to this size are read into memory once, rather than hashed and copied.
SMALL_FILE = 1 << 20


def _read_hash(fd: int) -> tuple[str, bytes | None]:
    """The content hash of the open file `fd`, and its content if small: such a file is
    read once, so the bytes hashed are the bytes written."""
    data = read_all(fd, SMALL_FILE)
    return (hashlib.sha256(data).hexdigest() if data is not None else sha256_of(fd)), data


# Below this many files one thread is quicker than starting more.
PARALLEL_FILES = 256
_WORKERS = min(8, 2 * (os.cpu_count() or 1))


class DirectorySource:
    """A root tree in a directory, walked in name order.

    A hash cache (`cache_file`) remembers the content hash of each file from the last
    import of the same directory, so that an unchanged file is not read again.
    """

    def __init__(self, root: Path, cache_file: Path | None) -> None:
        self.root = root
        self.label = root.name
        self.origin = str(root.resolve())
        self.cache_file = cache_file
        self._cache: HashCache | None = None

    def size(self) -> int:
        """Bytes of the tree's regular files, which is what the import counts."""
        total = 0
        for parent, _dirs, files in os.walk(self.root):
            for name in files:
                try:
                    st = os.lstat(os.path.join(parent, name))
                except OSError:
                    continue
                if stat.S_ISREG(st.st_mode):
                    total += st.st_size
        return total

    def import_into(
        self, dest: Path, store: ObjectStore, progress: Progress, dropped: frozenset[str]
    ) -> ImportReport:
        """Import into `dest` (created); what is inside the top-level `dropped` is not read."""
        dest.mkdir()
        if self.cache_file is not None:
            self._cache = HashCache(self.cache_file, self.root)
        job = _DirectoryImport(self.root, dest, store, progress, self._cache)
        job.place_all(job.walk(dropped))
        return job.tree.finish()

    def imported(self) -> None:
        """Keep the hashes for the next import of this directory."""
        if self._cache is not None:
            with contextlib.suppress(OSError):  # only an optimization for the next import
                self._cache.save()


@dataclass(frozen=True, slots=True)
class _File:
    slot: int  # its place among the tree's notes
    rel: str
    path: str
    st: os.stat_result
    xattrs: Xattrs  # as the walk read them, with `st`


@dataclass(frozen=True, slots=True)
class _Placed:
    file: _File
    meta: FileMeta
    digest: str
    linked: bool
    hashed: os.stat_result  # what the file was when `digest` was made, for the hash cache


# Files handed to the threads and not yet recorded, at most: the walk goes on while
# they work, and a big tree is never all in memory.
IN_FLIGHT = 64 * _WORKERS


class _DirectoryImport:
    """One walk of a directory into a new tree."""

    def __init__(
        self, root: Path, dest: Path, store: ObjectStore, progress: Progress,
        cache: HashCache | None,
    ) -> None:
        # The source may be named through a symlink; below it, none is followed.
        self.root = str(root.resolve())
        self.tree = TreeBuilder(dest, store, progress)
        self.cache = cache

    def walk(self, dropped: frozenset[str]) -> Iterator[_File]:
        """Add directories and symlinks as the walk finds them; yield the regular files.

        Files are placed by the caller, so that several threads can hash and copy them
        (hashing and file creation both let go of the GIL) while the walk goes on; their
        notes keep their place in the walk order. A directory is made before the walk
        yields anything below it.
        """
        rel = "."
        try:
            root_meta, entries = _listing(self.root, os.lstat(self.root))
        except IMPORT_ERRORS as err:
            raise import_error(f"{rel} from {self.root}", err) from None
        self.tree.add_dir(".", root_meta)
        try:
            for rel, st, extra in _walk(self.root, "", entries, dropped):
                file = self.add(rel, st, extra)
                if file is not None:
                    yield file
        except IMPORT_ERRORS as err:
            raise import_error(f"{rel} from {self.root}", err) from None

    def add(
        self, rel: str, st: os.stat_result, extra: _Link | Xattrs | FileMeta | None
    ) -> _File | None:
        """Add what is not a regular file; a regular file is returned, with its note's place."""
        path = f"{self.root}/{rel}"
        kind = FileType.of_mode(st.st_mode)
        if kind is FileType.DIR:
            self.tree.add_dir(rel, extra if isinstance(extra, FileMeta) else _dir_meta(path, st))
        elif kind is FileType.SYMLINK:
            assert isinstance(extra, _Link)
            self.tree.add_symlink(rel, extra.target, extra.meta)
        elif kind is FileType.FILE:
            assert isinstance(extra, tuple)
            return _File(self.tree.reserve_note(), rel, path, st, extra)
        else:
            self.tree.skip(rel, kind.description)
        return None

    def place_all(self, files: Iterator[_File]) -> None:
        """Place every file: in this thread for a few, else with a pool of threads."""
        to_read = self.unknown(files)
        first = list(itertools.islice(to_read, PARALLEL_FILES))
        if len(first) < PARALLEL_FILES:
            for file, digest in first:
                self.record(self.place(file, digest))
            return
        pool = ThreadPoolExecutor(_WORKERS, thread_name_prefix="bootkit-import")
        try:
            pending: collections.deque[Future[_Placed]] = collections.deque()
            for file, digest in itertools.chain(first, to_read):
                pending.append(pool.submit(self.place, file, digest))
                if len(pending) >= IN_FLIGHT:
                    self.record(pending.popleft().result())
            while pending:
                self.record(pending.popleft().result())
        finally:
            pool.shutdown(wait=True, cancel_futures=True)

    def unknown(self, files: Iterator[_File]) -> Iterator[tuple[_File, str | None]]:
        """The files to read, each with its hash if the cache knows it.

        A file under usr/ whose hash the cache knows costs one link to the stored
        object: cheaper done here than handed to a thread."""
        for file in files:
            digest = self.cache.get(file.rel, file.st) if self.cache else None
            if digest is not None and dedup_eligible(file.rel):
                placed = self.place_known(file, digest)
                if placed is not None:
                    self.record(placed)
                    continue
            yield file, digest

    def place_known(self, file: _File, digest: str) -> _Placed | None:
        """Put in place a file under usr/ whose hash the cache knows, as a link to its
        stored object, without opening it: the cache entry matched the walk's lstat
        (inode, size, mtime, ctime), so the content and the metadata are the ones the
        hash was made with, and the tree gets the store's inode, never the source's.
        None without a stored object: the file is then read as any other."""
        st = file.st
        meta = FileMeta(st.st_mode, st.st_uid, st.st_gid, file.xattrs, st.st_mtime)
        if self.tree.link_stored(file.rel, meta, digest):
            return _Placed(file, meta, digest, True, st)
        return None

    def place(self, file: _File, digest: str | None = None) -> _Placed:
        """Hash (unless known) and put one file in place. Thread-safe.

        The file is opened once and everything is taken from that descriptor (see
        `bootkit.base.seen`). A hash from the cache that the content no longer has is
        dropped and the file read again."""
        try:
            with open_seen(file.path, file.st) as fd:
                try:
                    return self.place_opened(file, fd, digest)
                except FileChanged:
                    if digest is None:
                        raise
                    return self.place_opened(file, fd, None)
        except IMPORT_ERRORS as err:
            raise import_error(f"{file.rel} from {self.root}", err) from None

    def place_opened(self, file: _File, fd: int, digest: str | None) -> _Placed:
        st = os.fstat(fd)
        meta = _meta_of(fd, st)
        # A copy takes room only if the content is new, but a sparse file claims it
        # before it is read: one that declares terabytes is refused at once.
        claimed = digest is None and st.st_blocks * 512 < st.st_size
        if claimed:
            self.tree.space.claim(file.rel, st.st_size)
        data = None
        # A hash from the cache holds for the file as the walk saw it (see `unknown`).
        hashed = file.st
        if digest is None:
            digest, data = _read_hash(fd)
            hashed = st
        fill = self.copier(file, fd, meta, digest, data, claimed)
        linked = self.tree.store_file(file.rel, meta, digest, fill)
        return _Placed(file, meta, digest, linked, hashed)

    def copier(
        self, file: _File, fd: int, meta: FileMeta, digest: str, data: bytes | None,
        claimed: bool,
    ) -> Callable[[str], None]:
        """What makes the copy of `file` when its content is new: `data` when it was read
        whole, else the content of `fd`, checked against `digest` as it is copied."""

        def write(out: int) -> None:
            if data is None:
                copy_verified(fd, out, digest, f"{file.rel} in {self.root}")
                return
            view = memoryview(data)
            while view:
                view = view[os.write(out, view) :]

        def fill(dst: str) -> None:
            if not claimed:
                self.tree.space.claim(file.rel, file.st.st_size)
            create_file(dst, meta, write)

        return fill

    def record(self, placed: _Placed) -> None:
        """Count a placed file and keep its hash for the next import; in this thread."""
        if self.cache:
            self.cache.put(placed.file.rel, placed.hashed, placed.digest)
        size = placed.file.st.st_size
        self.tree.count_file(
            placed.file.rel, placed.meta, placed.digest, size, placed.linked, placed.file.slot
        )
        self.tree.progress(size)
