"""Reading a file of a tree that someone else may change while bootkit reads it.

A walk of a tree says what each name is (lstat); by the time the file is read, its
owner may have swapped it for a symlink to a file of the host, or for a fifo. So a
file is opened once, its last component not followed, and kept only when the
descriptor is the very inode the walk saw (device and inode number); its content is
hashed and copied from that descriptor, and a copy gets its metadata through its own
descriptor, so no path is looked up twice.

The content can still be rewritten in place through that inode. What is stored
under a content hash is therefore hashed as it is written (`copy_verified`, or one
read into memory for a small file): bytes that differ from the hash are refused,
never stored under it.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import stat
from collections.abc import Iterator

from bootkit.errors import BootkitError

# O_NONBLOCK: should a fifo be swapped in after the walk, opening it does not hang.
READ_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
# Never through a symlink or into an existing file: a copy is always a new inode.
CREATE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
_CHUNK = 1 << 20


class FileChanged(BootkitError):
    """A file was not, or no longer, what a walk of its tree saw."""

    def __init__(self, what: str) -> None:
        super().__init__(f"{what} changed while bootkit read it",
                         hint="nothing may write into the tree while bootkit reads it")


def same_file(a: os.stat_result, b: os.stat_result) -> bool:
    return (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)


def _open_checked(
    path: str, flags: int, fmt: int, dev_ino: tuple[int, int], dir_fd: int | None
) -> int:
    try:
        fd = os.open(path, flags, dir_fd=dir_fd)
    except OSError as err:
        # ELOOP: a symlink now; ENOTDIR: not a directory now; ENXIO: a socket.
        if err.errno in (errno.ELOOP, errno.ENOTDIR, errno.ENXIO):
            raise FileChanged(path) from None
        raise
    st = os.fstat(fd)
    if stat.S_IFMT(st.st_mode) != fmt or (st.st_dev, st.st_ino) != dev_ino:
        os.close(fd)
        raise FileChanged(path)
    return fd


@contextlib.contextmanager
def open_seen(path: str, seen: os.stat_result, *, dir_fd: int | None = None) -> Iterator[int]:
    """A descriptor of the regular file or directory `path` (its last component not
    followed), when it is the object that `seen` (an lstat of it) describes;
    FileChanged when it is not."""
    fmt = stat.S_IFMT(seen.st_mode)
    flags = DIR_FLAGS if fmt == stat.S_IFDIR else READ_FLAGS
    fd = _open_checked(path, flags, fmt, (seen.st_dev, seen.st_ino), dir_fd)
    try:
        yield fd
    finally:
        os.close(fd)


@contextlib.contextmanager
def open_file(path: str | os.PathLike[str], dev_ino: tuple[int, int]) -> Iterator[int]:
    """A descriptor of the regular file `path`, when it is inode `dev_ino` (device and
    inode number, as a walk saw them); FileChanged when it is not."""
    fd = _open_checked(os.fspath(path), READ_FLAGS, stat.S_IFREG, dev_ino, None)
    try:
        yield fd
    finally:
        os.close(fd)


def entry_path(dir_fd: int, name: str) -> str:
    """A path that names `name` in the directory open as `dir_fd`, for the calls that take
    no descriptor (extended attributes of a symlink): through /proc, the directory is
    the one held, whatever its path names now; its last component is `name` itself."""
    return f"/proc/self/fd/{dir_fd}/{name}"


def read_all(fd: int, limit: int) -> bytes | None:
    """The whole content of `fd` from its start, or None when it is over `limit` bytes."""
    size = os.fstat(fd).st_size
    if size > limit:
        return None
    # Reads go on until one returns nothing: the file may have grown since fstat.
    data = os.pread(fd, size, 0)
    while len(data) <= limit:
        block = os.pread(fd, min(1 << 16, limit + 1 - len(data)), len(data))
        if not block:
            return data
        data += block
    return None


def sha256_of(fd: int) -> str:
    """The SHA-256 of the content of `fd`, read from its start, in hex."""
    with os.fdopen(fd, "rb", closefd=False) as f:
        f.seek(0)
        return hashlib.file_digest(f, "sha256").hexdigest()


def copy_fd(src: int, dst: int) -> str:
    """Copy `src` from its start to `dst`; the SHA-256 of what was copied, in hex."""
    h = hashlib.sha256()
    offset = 0
    while block := os.pread(src, _CHUNK, offset):
        h.update(block)
        view = memoryview(block)
        while view:
            view = view[os.write(dst, view) :]
        offset += len(block)
    return h.hexdigest()


def copy_verified(src: int, dst: int, digest: str, what: str) -> None:
    """Copy `src` from its start to `dst`; FileChanged, naming `what`, unless what was
    copied has the SHA-256 `digest`."""
    if copy_fd(src, dst) != digest:
        raise FileChanged(what)
