"""The cpio "newc" archive format that the kernel unpacks into its initial rootfs.

Each member is a 110-byte ASCII header (13 fields of 8 hex digits after the
magic), the NUL-terminated name padded to 4 bytes, then the data padded to
4 bytes; a member named ``TRAILER!!!`` ends the archive. The kernel accepts
several archives back to back, separated by NUL padding, which is how an
uncompressed early archive (CPU microcode) precedes the compressed main one.
"""

from __future__ import annotations

import io
import re
import stat
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import BinaryIO

from construct import (
    Adapter,
    Bytes,
    ConstructError,
    Container,
    Default,
    OneOf,
    Padding,
    Rebuild,
    StreamError,
    Struct,
    len_,
    this,
)

from bootkit.base.filetypes import FileType
from bootkit.errors import BootkitError

MAGIC_NEWC = b"070701"
# Same layout; `check` holds the byte sum of the data. Readers accept both.
MAGIC_NEWC_CRC = b"070702"
TRAILER = "TRAILER!!!"
_NOT_NUL = re.compile(rb"[^\0]")
HEADER_SIZE = 110


class _Hex8(Adapter):  # type: ignore[misc]  # construct is untyped
    """An unsigned number stored as 8 ASCII hex digits."""

    def _decode(self, obj: bytes, context: object, path: str) -> int:
        try:
            return int(obj, 16)
        except ValueError as err:
            raise ConstructError(f"not a hex number: {obj!r}", path) from err

    def _encode(self, obj: int, context: object, path: str) -> bytes:
        if not 0 <= obj <= 0xFFFFFFFF:
            raise ConstructError(f"{obj} does not fit in a cpio header field", path)
        return b"%08X" % obj


class _Name(Adapter):  # type: ignore[misc]  # construct is untyped
    """A member name: bytes with a trailing NUL, exposed as str (undecodable bytes kept)."""

    def _decode(self, obj: bytes, context: object, path: str) -> str:
        return obj.rstrip(b"\0").decode("utf-8", "surrogateescape")

    def _encode(self, obj: str, context: object, path: str) -> bytes:
        return obj.encode("utf-8", "surrogateescape") + b"\0"


def _encoded_name_size(ctx: Container) -> int:
    name: str = ctx.name
    return len(name.encode("utf-8", "surrogateescape")) + 1


Hex8 = _Hex8(Bytes(8))

NEWC_MEMBER = Struct(
    "magic" / Default(OneOf(Bytes(6), [MAGIC_NEWC, MAGIC_NEWC_CRC]), MAGIC_NEWC),
    "ino" / Hex8,
    "mode" / Hex8,
    "uid" / Hex8,
    "gid" / Hex8,
    "nlink" / Hex8,
    "mtime" / Hex8,
    "filesize" / Rebuild(Hex8, len_(this.data)),
    "devmajor" / Hex8,
    "devminor" / Hex8,
    "rdevmajor" / Hex8,
    "rdevminor" / Hex8,
    "namesize" / Rebuild(Hex8, _encoded_name_size),
    "check" / Hex8,
    "name" / _Name(Bytes(this.namesize)),
    Padding(lambda ctx: -(HEADER_SIZE + ctx.namesize) % 4),
    "data" / Bytes(this.filesize),
    Padding(lambda ctx: -ctx.filesize % 4),
)


@dataclass(frozen=True)
class Member:
    """One archive member. Symlinks keep their target in `data`, as cpio does."""

    name: str
    mode: int
    data: bytes = b""
    uid: int = 0
    gid: int = 0
    mtime: int = 0
    nlink: int = 1
    ino: int = 0
    rdev: tuple[int, int] = (0, 0)

    @property
    def kind(self) -> FileType | None:
        """None for a mode of no file type (the trailer's 0, say)."""
        try:
            return FileType.of_mode(self.mode)
        except ValueError:
            return None

    @property
    def size(self) -> int:
        return len(self.data)

    @property
    def link_target(self) -> str | None:
        return self.data.decode("utf-8", "surrogateescape") if self.kind is FileType.SYMLINK else None


def directory(name: str, mode: int = 0o755) -> Member:
    return Member(name, stat.S_IFDIR | mode, nlink=2)


def regular_file(name: str, data: bytes, mode: int = 0o644) -> Member:
    return Member(name, stat.S_IFREG | mode, data)


def symlink(name: str, target: str) -> Member:
    return Member(name, stat.S_IFLNK | 0o777, target.encode("utf-8", "surrogateescape"))


def char_device(name: str, major: int, minor: int, mode: int = 0o600) -> Member:
    return Member(name, stat.S_IFCHR | mode, rdev=(major, minor))


def write_archive(members: Iterable[Member], out: BinaryIO) -> int:
    """Write `members` and the trailer as one newc archive; return the bytes written.

    Inode numbers are assigned in order (starting at 1) unless a member sets
    one, so two runs over the same members give the same bytes.
    """
    written = 0
    next_ino = 1
    for member in members:
        if member.name == TRAILER:
            raise BootkitError(f"cpio member may not be named {TRAILER}")
        ino = member.ino or next_ino
        next_ino = max(next_ino, ino) + 1
        written += _write_member(out, member, ino)
    written += _write_member(out, Member(TRAILER, 0, nlink=1), 0)
    return written


def _write_member(out: BinaryIO, member: Member, ino: int) -> int:
    blob = NEWC_MEMBER.build(
        {
            "ino": ino,
            "mode": member.mode,
            "uid": member.uid,
            "gid": member.gid,
            "nlink": member.nlink,
            "mtime": member.mtime,
            "devmajor": 0,
            "devminor": 0,
            "rdevmajor": member.rdev[0],
            "rdevminor": member.rdev[1],
            "check": 0,
            "name": member.name,
            "data": member.data,
        }
    )
    out.write(blob)
    return len(blob)


def archive_bytes(members: Iterable[Member]) -> bytes:
    buf = io.BytesIO()
    write_archive(members, buf)
    return buf.getvalue()


def is_cpio_start(data: bytes | memoryview, offset: int = 0) -> bool:
    return bytes(data[offset : offset + 6]) in (MAGIC_NEWC, MAGIC_NEWC_CRC)


def read_archive(data: bytes | memoryview, offset: int = 0) -> tuple[list[Member], int]:
    """Parse one archive starting at `offset`; return its members and the offset after the trailer.

    Both newc magics are accepted; the old binary and odc formats are not,
    because the kernel does not unpack them either.
    """
    stream = io.BytesIO(data)
    stream.seek(offset)
    members = list(_members_until_trailer(stream))
    return members, stream.tell()


def read_archives(data: bytes) -> Iterator[Member]:
    """Members of every archive in `data`, where archives follow each other with NUL padding.

    This is what the kernel does inside one decompressed stream.
    """
    stream = io.BytesIO(data)
    pos = 0
    while (found := _NOT_NUL.search(data, pos)) is not None:
        pos = found.start()
        if not is_cpio_start(data, pos):
            raise BootkitError(f"junk after cpio archive at offset {pos}")
        stream.seek(pos)
        yield from _members_until_trailer(stream)
        pos = stream.tell()


def _members_until_trailer(stream: BinaryIO) -> Iterator[Member]:
    while True:
        pos = stream.tell()
        try:
            parsed = NEWC_MEMBER.parse_stream(stream)
        except StreamError as err:
            raise BootkitError(f"cpio archive truncated in the member at offset {pos}") from err
        except ConstructError as err:
            raise BootkitError(f"corrupt cpio member at offset {pos}: {err}") from err
        if parsed.name == TRAILER:
            return
        yield Member(
            name=parsed.name,
            mode=parsed.mode,
            data=parsed.data,
            uid=parsed.uid,
            gid=parsed.gid,
            mtime=parsed.mtime,
            nlink=parsed.nlink,
            ino=parsed.ino,
            rdev=(parsed.rdevmajor, parsed.rdevminor),
        )
