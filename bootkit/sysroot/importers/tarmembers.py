"""What a tar member is, checked as every importer of archives checks it: a tree's
archive and an image's layers follow the same rules."""

from __future__ import annotations

import hashlib
import os
import stat
import tarfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import PurePosixPath
from typing import Protocol

from bootkit.base.filetypes import FileType
from bootkit.base.seen import CREATE_FLAGS
from bootkit.base.xattrs import Xattrs
from bootkit.errors import BootkitError
from bootkit.sysroot.store import FileMeta, apply_meta, create_file

ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"


def member_rel(name: str, *, rooted: bool = False) -> str:
    """A member's name as a path relative to the tree's root, "." for the root itself;
    '..' is refused anywhere. Empty and "." components are dropped, as PurePosixPath
    drops them: plain string work, as this runs once per member.

    With `rooted`, a name that starts with '/' is taken relative to the root, as
    container engines read image layers (umoci writes the root itself as "/");
    else it is refused, as an archive of a tree has no business with absolute names.
    """
    if rooted:
        name = name.lstrip("/") or "."
    if name.startswith("/"):
        raise BootkitError(
            f"tar member {name!r} has an absolute path",
            hint="build the archive relative to the tree's root",
        )
    parts = [p for p in name.split("/") if p and p != "."]
    if ".." in parts:
        raise BootkitError(
            f"tar member {name!r} contains '..'", hint="the archive may be malicious; rebuild it"
        )
    return "/".join(parts) or "."


def member_path(name: str, *, rooted: bool = False) -> PurePosixPath:
    """`member_rel` as a path."""
    return PurePosixPath(member_rel(name, rooted=rooted))


def escapes(rel: PurePosixPath | str, target: str) -> bool:
    """Whether a relative symlink at `rel` (as `member_rel` gives it) points above the
    tree's root."""
    if target.startswith("/"):
        return False  # resolved against the deployment's own root at boot
    rel = str(rel)
    depth = rel.count("/") if rel != "." else 0  # of the directory holding the link
    for part in target.split("/"):
        if part == "..":
            depth -= 1
            if depth < 0:
                return True
        elif part and part != ".":
            depth += 1
    return False


# What each tar member type is; a hardlink (LNKTYPE) names another member instead.
MEMBER_TYPES = {
    **dict.fromkeys(tarfile.REGULAR_TYPES, FileType.FILE),
    tarfile.DIRTYPE: FileType.DIR,
    tarfile.SYMTYPE: FileType.SYMLINK,
    tarfile.CHRTYPE: FileType.CHAR,
    tarfile.BLKTYPE: FileType.BLOCK,
    tarfile.FIFOTYPE: FileType.FIFO,
}


# A directory that an archive leaves out but holds members of (`tar -cf x.tar $(find
# -type f)`, many OCI layers) is made as tar makes it, but with a mode and owner that
# do not depend on who extracts it or their umask: 0755, root's. Its note is the
# same as for a directory of that mode in a directory source, so the content digest
# of the tree does not depend on whether the archive listed its directories.
IMPLICIT_DIR_MODE = 0o755


def implicit_dir(mtime: float) -> FileMeta:
    return FileMeta(stat.S_IFDIR | IMPLICIT_DIR_MODE, 0, 0, (), float(mtime))


def format_bits(kind: FileType | None) -> int:
    # Only directories, symlinks and files are imported; their notes carry these bits.
    if kind is FileType.DIR or kind is FileType.SYMLINK:
        return kind.format_bits
    return stat.S_IFREG


def pax_xattrs(m: tarfile.TarInfo) -> Xattrs:
    if not m.pax_headers:
        return ()  # most members of most archives
    prefix = "SCHILY.xattr."
    return tuple(
        sorted(
            (k[len(prefix) :], v.encode("utf-8", "surrogateescape"))
            for k, v in m.pax_headers.items()
            if k.startswith(prefix)
        )
    )


# Tar members up to this size are read into memory rather than spooled to a file.
IN_MEMORY = 1 << 20


def _writer(data: bytes, meta: FileMeta) -> Callable[[str], None]:
    def write(fd: int) -> None:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]

    def fill(dst: str) -> None:
        create_file(dst, meta, write)

    return fill


class Reader(Protocol):
    """What a member's content is read from."""

    def read(self, n: int = -1, /) -> bytes: ...


def member_digest(f: Reader) -> str:
    """The content hash of a file member read from `f`, for a member not written."""
    h = hashlib.sha256()
    while block := f.read(1 << 20):
        h.update(block)
    return h.hexdigest()


@contextmanager
def member_content(
    f: Reader, size: int, meta: FileMeta, spool: str
) -> Iterator[tuple[str, Callable[[str], None]]]:
    """The content hash of a file member read from `f`, and what makes a file of it with
    `meta` at a path (see `store.create_file`); to be used within the block.

    Most files of a tree are small and most are stored already: hashing them in memory
    spares a file written and removed. A large one is spooled to `spool` while hashed,
    then renamed into place if new; the spool is removed when the block ends.
    """
    if size <= IN_MEMORY:
        data = f.read()
        yield hashlib.sha256(data).hexdigest(), _writer(data, meta)
        return
    h = hashlib.sha256()
    fd = os.open(spool, CREATE_FLAGS, 0o600)
    try:
        try:
            while block := f.read(1 << 20):
                h.update(block)
                view = memoryview(block)
                while view:
                    view = view[os.write(fd, view) :]
            apply_meta(fd, meta)
        finally:
            os.close(fd)

        def fill(dst: str) -> None:
            os.rename(spool, dst)

        yield h.hexdigest(), fill
    finally:
        if os.path.lexists(spool):
            os.unlink(spool)
