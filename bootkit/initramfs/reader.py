"""Read an initramfs image the way the kernel unpacks it: segment after segment.

A typical distribution image is an uncompressed cpio archive with CPU
microcode followed by the compressed main archive; each segment may be
followed by NUL padding. Any number and mix of segments is accepted.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from bootkit.errors import BootkitError
from bootkit.initramfs.compression import decompress_stream
from bootkit.initramfs.cpio import Member, is_cpio_start, read_archive, read_archives

_NOT_NUL = re.compile(rb"[^\0]")


@dataclass(frozen=True)
class Segment:
    """One piece of the image: where it is, how it is compressed, what it holds."""

    offset: int
    length: int
    compression: str  # "none" for a plain cpio archive
    members: tuple[Member, ...]


def read_segments(data: bytes) -> list[Segment]:
    segments: list[Segment] = []
    pos = 0
    while (found := _NOT_NUL.search(data, pos)) is not None:
        pos = found.start()
        if is_cpio_start(data, pos):
            members, end = read_archive(data, pos)
            segments.append(Segment(pos, end - pos, "none", tuple(members)))
            pos = end
        else:
            stream = decompress_stream(data, pos)
            members_in_stream = tuple(read_archives(stream.content))
            segments.append(Segment(pos, stream.length, stream.method, members_in_stream))
            pos += stream.length
    if not segments:
        raise BootkitError("the image is empty (only NUL bytes)")
    return segments


def read_image(path: Path) -> list[Segment]:
    try:
        data = path.read_bytes()
    except OSError as err:
        raise BootkitError(f"cannot read {path}: {err.strerror}") from err
    try:
        return read_segments(data)
    except BootkitError as err:
        raise BootkitError(f"{path}: {err.message}", hint=err.hint) from err


def members(segments: list[Segment]) -> dict[str, Member]:
    """The files the kernel ends up with: a later segment's member replaces an earlier one."""
    result: dict[str, Member] = {}
    for segment in segments:
        for member in segment.members:
            result[normalize_name(member.name)] = member
    return result


def normalize_name(name: str) -> str:
    """`./usr/bin`, `/usr/bin` and `usr/bin` name the same file; `.` is the root."""
    stripped = name.lstrip("/")
    while stripped.startswith("./"):
        stripped = stripped[2:]
    return stripped or "."
