"""Where a new deployment's tree comes from: one small protocol, one class per kind of source.

A source fills a fresh directory with a root tree, files under `usr/` going through
the content store (see `bootkit.sysroot.store`), and reports what it imported,
including the digest that names the tree's content.
"""

from __future__ import annotations

import stat
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from bootkit.base.filetypes import FileType
from bootkit.errors import BootkitError
from bootkit.sysroot.importers.directory import DirectorySource
from bootkit.sysroot.importers.tree import ImportReport, Progress
from bootkit.sysroot.store import ObjectStore

# The tar importer (tarfile, the decompressor processes) is loaded for an archive only.
if TYPE_CHECKING:
    from bootkit.sysroot.importers.tar import TarSource


def __getattr__(name: str) -> object:
    if name == "TarSource":
        from bootkit.sysroot.importers.tar import TarSource

        return TarSource
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

__all__ = [
    "DirectorySource",
    "ImportReport",
    "Progress",
    "Source",
    "TarSource",
    "check_outside",
    "open_source",
]


class Source(Protocol):
    label: str  # short name for a progress bar, e.g. "rootfs.tar.zst"
    origin: str  # what a deployment records as where it came from

    def size(self) -> int:
        """Bytes the progress callback will count."""
        ...

    def import_into(
        self, dest: Path, store: ObjectStore, progress: Progress, dropped: frozenset[str]
    ) -> ImportReport:
        """Fill `dest`, a fresh directory to create; the content of the top-level names in
        `dropped` is discarded by the caller, so a source need not read it."""
        ...

    def imported(self) -> None:
        """Called once the deployment is committed."""
        ...


def open_source(location: Path, cache_file: Path | None = None) -> Source:
    """The source at `location`: a directory, or a tar archive in a regular file.

    `cache_file` keeps a directory's file hashes between imports (none without it).
    """
    try:
        st = location.stat()
    except (FileNotFoundError, NotADirectoryError):
        raise BootkitError(
            f"source {location} does not exist",
            hint="give a directory or a tar archive of a root tree",
        ) from None
    if stat.S_ISDIR(st.st_mode):
        return DirectorySource(location, cache_file)
    if stat.S_ISREG(st.st_mode):
        from bootkit.sysroot.importers.tar import TarSource

        return TarSource(location)
    raise BootkitError(
        f"source {location} is a {FileType.of_mode(st.st_mode).description}, "
        "not a directory or a tar archive",
        hint="give a directory or a tar archive of a root tree",
    )


def check_outside(location: Path, written: Path) -> None:
    """Refuse a source directory that holds `written`, where the import writes: its walk
    would read the tree being built, and never end.

    Directories are compared by identity, so a bind mount or a symlink is seen through.
    """
    try:
        source = location.stat()
    except OSError:
        return  # open_source says what is wrong with it
    if not stat.S_ISDIR(source.st_mode):
        return
    resolved = written.resolve()
    for parent in (resolved, *resolved.parents):
        try:
            st = parent.stat()
        except FileNotFoundError:
            continue  # not made yet
        if (st.st_dev, st.st_ino) == (source.st_dev, source.st_ino):
            raise BootkitError(
                f"source {location} contains {written}, where bootkit builds the new deployment",
                hint="deploy a directory that holds only the OS tree; copy a running "
                "system's tree elsewhere first",
            )
