"""Importing a directory tree: a sorted walk, with regular files read by a thread pool."""

from __future__ import annotations

import hashlib
import os
import shutil
import stat
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from bootkit.sysroot.hashcache import HashCache
from bootkit.sysroot.importers.tree import ImportReport, Progress, TreeBuilder
from bootkit.sysroot.store import FileMeta, ObjectStore, dedup_eligible


def _read_xattrs(path: str | Path) -> tuple[tuple[str, bytes], ...]:
    try:
        names = os.listxattr(path, follow_symlinks=False)
    except OSError:
        return ()
    if not names:
        return ()
    out = []
    for name in sorted(names):
        try:
            out.append((name, os.getxattr(path, name, follow_symlinks=False)))
        except OSError:
            continue
    return tuple(out)


def _meta_of(path: str, st: os.stat_result) -> FileMeta:
    return FileMeta(st.st_mode, st.st_uid, st.st_gid, _read_xattrs(path), st.st_mtime)


def _hash_file(path: str) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def _copier(src: str) -> Callable[[str], None]:
    def fill(dst: str) -> None:
        shutil.copyfile(src, dst, follow_symlinks=False)

    return fill


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


def import_directory(
    src: Path,
    dest: Path,
    store: ObjectStore,
    progress: Progress | None = None,
    cache: HashCache | None = None,
    contents_dropped: frozenset[str] = frozenset(),
) -> ImportReport:
    """Import the directory `src`; the contents of `contents_dropped` (top-level names)
    are not read: the caller discards them anyway."""
    imp = TreeBuilder(dest, store, progress)
    root = str(src)
    imp.add_dir(".", _meta_of(root, os.stat(root)))
    # Directories and symlinks as the walk finds them; regular files afterwards, so that
    # several threads can hash and copy them (hashing and file creation both let go of
    # the GIL), while their notes keep their place in the walk order.
    files: list[tuple[int, str, str, os.stat_result]] = []
    for rel, entry in _walk(root, "", contents_dropped):
        path = entry.path
        st = entry.stat(follow_symlinks=False)
        mode = st.st_mode
        if stat.S_ISDIR(mode):
            imp.add_dir(rel, _meta_of(path, st))
        elif stat.S_ISLNK(mode):
            imp.add_symlink(rel, os.readlink(path), _meta_of(path, st))
        elif stat.S_ISREG(mode):
            files.append((imp.reserve_note(), rel, path, st))
        else:
            imp.skip(rel, _kind(mode))

    Placed = tuple[int, str, FileMeta, str, int, bool]

    def place(item: tuple[int, str, str, os.stat_result], digest: str | None = None) -> Placed:
        slot, rel, path, st = item
        if digest is None:
            digest = _hash_file(path)
            if cache:
                cache.put(rel, st, digest)
        meta = _meta_of(path, st)
        return slot, rel, meta, digest, st.st_size, imp.store_file(rel, meta, digest, _copier(path))

    def record(placed: Placed) -> None:
        slot, rel, meta, digest, size, linked = placed
        imp.count_file(rel, meta, digest, size, linked, slot)
        imp.progress(size)

    # A file under usr/ whose hash the cache knows costs one link to the stored
    # object: cheaper here than handing it to a thread. The rest are read or copied.
    to_read: list[tuple[int, str, str, os.stat_result]] = []
    digests: list[str | None] = []
    for item in files:
        digest = cache.get(item[1], item[3]) if cache else None
        if digest is not None and dedup_eligible(item[1]):
            record(place(item, digest))
        else:
            to_read.append(item)
            digests.append(digest)
    if len(to_read) < PARALLEL_FILES:
        for item, digest in zip(to_read, digests, strict=True):
            record(place(item, digest))
    else:
        pool = ThreadPoolExecutor(_WORKERS, thread_name_prefix="bootkit-import")
        try:
            for placed in pool.map(place, to_read, digests):
                record(placed)
        finally:
            pool.shutdown(wait=True, cancel_futures=True)
    return imp.finish()


def _kind(mode: int) -> str:
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "device node"
    if stat.S_ISSOCK(mode):
        return "socket"
    if stat.S_ISFIFO(mode):
        return "fifo"
    return "special file"


def source_size(src: Path) -> int:
    """Bytes the progress bar will count for `src`."""
    if src.is_file():
        return src.stat().st_size
    total = 0
    for root, _dirs, files in os.walk(src):
        for name in files:
            try:
                st = os.lstat(os.path.join(root, name))
            except OSError:
                continue
            if stat.S_ISREG(st.st_mode):
                total += st.st_size
    return total
