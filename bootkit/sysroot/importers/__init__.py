"""Importing a root tree (a directory or a tar archive) as a new deployment tree."""

from __future__ import annotations

from pathlib import Path

from bootkit.errors import BootkitError
from bootkit.sysroot.hashcache import HashCache
from bootkit.sysroot.importers.directory import import_directory, source_size
from bootkit.sysroot.importers.tar import import_tar
from bootkit.sysroot.importers.tree import ImportReport, Progress
from bootkit.sysroot.store import ObjectStore

__all__ = ["ImportReport", "Progress", "import_source", "source_size"]


def import_source(
    src: Path,
    dest: Path,
    store: ObjectStore,
    progress: Progress | None = None,
    cache: HashCache | None = None,
    contents_dropped: frozenset[str] = frozenset(),
) -> ImportReport:
    """Import `src` (directory or tar archive) into the fresh directory `dest`.

    `cache` and `contents_dropped` apply to a directory source only (see import_directory).
    """
    if src.is_dir():
        dest.mkdir()
        return import_directory(src, dest, store, progress, cache, contents_dropped)
    if src.is_file():
        dest.mkdir()
        return import_tar(src, dest, store, progress)
    raise BootkitError(
        f"source {src} does not exist", hint="give a directory or a tar archive of a root tree"
    )
