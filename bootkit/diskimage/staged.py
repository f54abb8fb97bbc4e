"""Working in the staged copy of an image's tree by directory descriptors.

The copy holds what the image holds, symlinks included, and those mean something
only inside the image. Every change bootkit makes to the copy after it was taken
out (a hard link restored, a device node made, an owner set) goes through
directories opened one component at a time with O_NOFOLLOW from the copy's top,
and acts on the last name without following it: a symlink in the way is an error,
never a way out of the staging directory.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

from bootkit.errors import BootkitError

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


@contextlib.contextmanager
def opened(top: Path) -> Iterator[int]:
    """The directory `top` (which bootkit made), open."""
    fd = os.open(top, _DIR_FLAGS)
    try:
        yield fd
    finally:
        os.close(fd)


def _parts(rel: str) -> list[str]:
    return [p for p in rel.split("/") if p]


def _open_dir(top: int, parts: list[str], rel: str) -> int:
    fd = os.open(".", _DIR_FLAGS, dir_fd=top)
    try:
        for part in parts:
            if part in (".", ".."):
                raise NotADirectoryError(f"{part!r} in a path to stay below the top")
            inner = os.open(part, _DIR_FLAGS, dir_fd=fd)
            os.close(fd)
            fd = inner
    except OSError as e:
        os.close(fd)
        raise BootkitError(
            f"/{rel} in the staged copy of the image is not reached through directories only "
            f"({e.strerror or e})",
            hint="something changed the staged copy, or the image holds a symlink in its place",
        ) from None
    return fd


@contextlib.contextmanager
def directory(top: int, rel: str) -> Iterator[int]:
    """The directory `rel` below `top`, open, reached through real directories only."""
    fd = _open_dir(top, _parts(rel), rel)
    try:
        yield fd
    finally:
        os.close(fd)


@contextlib.contextmanager
def parent(top: int, rel: str) -> Iterator[tuple[int, str]]:
    """The directory holding `rel` (open, reached as `directory` does) and `rel`'s last name."""
    parts = _parts(rel)
    if not parts:
        raise ValueError("the top has no parent below it")
    with directory(top, "/".join(parts[:-1])) as fd:
        yield fd, parts[-1]


def lstat(top: int, rel: str) -> os.stat_result:
    """What `rel` is, not followed if it is a symlink."""
    if not _parts(rel):
        return os.fstat(top)
    with parent(top, rel) as (fd, name):
        return os.stat(name, dir_fd=fd, follow_symlinks=False)
