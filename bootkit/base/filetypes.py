"""The kinds of filesystem object, named once for every reader of trees and archives."""

from __future__ import annotations

import stat
from enum import StrEnum


class FileType(StrEnum):
    FILE = "file"
    DIR = "dir"
    SYMLINK = "symlink"
    CHAR = "char"
    BLOCK = "block"
    FIFO = "fifo"
    SOCKET = "socket"

    @classmethod
    def of_mode(cls, mode: int) -> FileType:
        """The type of an `st_mode` (or a tar or cpio mode); ValueError for none of them."""
        try:
            return _BY_FORMAT[stat.S_IFMT(mode)]
        except KeyError:
            raise ValueError(f"mode {mode:o} is of no known file type") from None

    @property
    def format_bits(self) -> int:
        """The `S_IFMT` bits of this type, for a mode or `os.mknod`."""
        return _FORMAT[self]

    @property
    def special(self) -> bool:
        """A device node, fifo or socket: no content of its own to copy."""
        return self in (FileType.CHAR, FileType.BLOCK, FileType.FIFO, FileType.SOCKET)

    @property
    def description(self) -> str:
        """The name a message uses for it: "device node", "fifo", "regular file", ..."""
        return _DESCRIPTION[self]


_FORMAT = {
    FileType.FILE: stat.S_IFREG,
    FileType.DIR: stat.S_IFDIR,
    FileType.SYMLINK: stat.S_IFLNK,
    FileType.CHAR: stat.S_IFCHR,
    FileType.BLOCK: stat.S_IFBLK,
    FileType.FIFO: stat.S_IFIFO,
    FileType.SOCKET: stat.S_IFSOCK,
}
_BY_FORMAT = {bits: kind for kind, bits in _FORMAT.items()}
_DESCRIPTION = {
    FileType.FILE: "regular file",
    FileType.DIR: "directory",
    FileType.SYMLINK: "symlink",
    FileType.CHAR: "device node",
    FileType.BLOCK: "device node",
    FileType.FIFO: "fifo",
    FileType.SOCKET: "socket",
}
