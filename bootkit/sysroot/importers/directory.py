"""Importing a directory tree: a sorted walk, with regular files read by a thread pool."""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import stat
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from bootkit.base.filetypes import FileType
from bootkit.base.xattrs import read_xattrs
from bootkit.sysroot.hashcache import HashCache
from bootkit.sysroot.importers.tree import (
    IMPORT_ERRORS,
    ImportReport,
    Progress,
    TreeBuilder,
    import_error,
)
from bootkit.sysroot.store import FileMeta, ObjectStore, dedup_eligible


def _meta_of(path: str, st: os.stat_result) -> FileMeta:
    return FileMeta(st.st_mode, st.st_uid, st.st_gid, read_xattrs(path), st.st_mtime)


def _hash_file(path: str) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def _walk(src: str, rel: str, prune: frozenset[str]) -> Iterator[tuple[str, os.DirEntry[str]]]:
    with os.scandir(f"{src}/{rel}" if rel else src) as it:
        entries = sorted(it, key=lambda e: e.name)
    for entry in entries:
        child = f"{rel}/{entry.name}" if rel else entry.name
        yield child, entry
        if entry.is_dir(follow_symlinks=False) and child not in prune:
            yield from _walk(src, child, prune)


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


@dataclass(frozen=True)
class _File:
    slot: int  # its place among the tree's notes
    rel: str
    path: str
    st: os.stat_result


@dataclass(frozen=True)
class _Placed:
    file: _File
    meta: FileMeta
    digest: str
    linked: bool


class _DirectoryImport:
    """One walk of a directory into a new tree."""

    def __init__(
        self, root: Path, dest: Path, store: ObjectStore, progress: Progress,
        cache: HashCache | None,
    ) -> None:
        self.root = str(root)
        self.tree = TreeBuilder(dest, store, progress)
        self.cache = cache

    def walk(self, dropped: frozenset[str]) -> list[_File]:
        """Add directories and symlinks as the walk finds them; return the regular files.

        Files come afterwards, so that several threads can hash and copy them (hashing
        and file creation both let go of the GIL), while their notes keep their place
        in the walk order.
        """
        self.tree.add_dir(".", _meta_of(self.root, os.stat(self.root)))
        files: list[_File] = []
        for rel, entry in _walk(self.root, "", dropped):
            try:
                self.add(rel, entry, files)
            except IMPORT_ERRORS as err:
                raise import_error(f"{rel} from {self.root}", err) from None
        return files

    def add(self, rel: str, entry: os.DirEntry[str], files: list[_File]) -> None:
        path = entry.path
        st = entry.stat(follow_symlinks=False)
        kind = FileType.of_mode(st.st_mode)
        if kind is FileType.DIR:
            self.tree.add_dir(rel, _meta_of(path, st))
        elif kind is FileType.SYMLINK:
            self.tree.add_symlink(rel, os.readlink(path), _meta_of(path, st))
        elif kind is FileType.FILE:
            files.append(_File(self.tree.reserve_note(), rel, path, st))
        else:
            self.tree.skip(rel, kind.description)

    def place_all(self, files: list[_File]) -> None:
        # A file under usr/ whose hash the cache knows costs one link to the stored
        # object: cheaper here than handing it to a thread. The rest are read or copied.
        to_read: list[_File] = []
        digests: list[str | None] = []
        for file in files:
            digest = self.cache.get(file.rel, file.st) if self.cache else None
            if digest is not None and dedup_eligible(file.rel):
                self.record(self.place(file, digest))
            else:
                to_read.append(file)
                digests.append(digest)
        if len(to_read) < PARALLEL_FILES:
            for file, digest in zip(to_read, digests, strict=True):
                self.record(self.place(file, digest))
            return
        pool = ThreadPoolExecutor(_WORKERS, thread_name_prefix="bootkit-import")
        try:
            for placed in pool.map(self.place, to_read, digests):
                self.record(placed)
        finally:
            pool.shutdown(wait=True, cancel_futures=True)

    def place(self, file: _File, digest: str | None = None) -> _Placed:
        """Hash (unless known) and put one file in place. Thread-safe."""
        try:
            # A copy takes room only if the content is new, but a sparse file claims it
            # before it is read: one that declares terabytes is refused at once.
            claimed = digest is None and file.st.st_blocks * 512 < file.st.st_size
            if claimed:
                self.tree.space.claim(file.rel, file.st.st_size)
            if digest is None:
                digest = _hash_file(file.path)
                if self.cache:
                    self.cache.put(file.rel, file.st, digest)
            meta = _meta_of(file.path, file.st)
            linked = self.tree.store_file(file.rel, meta, digest, self.copier(file, claimed))
        except IMPORT_ERRORS as err:
            raise import_error(f"{file.rel} from {self.root}", err) from None
        return _Placed(file, meta, digest, linked)

    def copier(self, file: _File, claimed: bool) -> Callable[[str], None]:
        """What copies `file` when its content is new, claiming its room unless `claimed`."""

        def fill(dst: str) -> None:
            if not claimed:
                self.tree.space.claim(file.rel, file.st.st_size)
            shutil.copyfile(file.path, dst, follow_symlinks=False)

        return fill

    def record(self, placed: _Placed) -> None:
        size = placed.file.st.st_size
        self.tree.count_file(
            placed.file.rel, placed.meta, placed.digest, size, placed.linked, placed.file.slot
        )
        self.tree.progress(size)
