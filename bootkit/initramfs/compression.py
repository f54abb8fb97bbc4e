"""Compressors the kernel can unpack an initramfs with, and finding where a compressed stream ends.

The kernel reads an initramfs as a sequence of segments: a plain cpio
archive, or one compressed stream recognised by its magic bytes, each maybe
followed by NUL padding. To list an image the way the kernel unpacks it, each
stream's exact length must be known: gzip, xz, lzma and bzip2 decoders report
it; zstd and lz4 streams are measured by walking their frame and block
headers.
"""

from __future__ import annotations

import bz2
import gzip
import lzma
import zlib
from dataclasses import dataclass
from typing import Protocol

from construct import (
    BitsInteger,
    BitStruct,
    Bytes,
    ByteSwapped,
    ConstructError,
    Flag,
    If,
    Int8ul,
    Int32ul,
    Struct,
)

from bootkit.base import process
from bootkit.errors import BootkitError

# What `--compress` accepts, in the order the help lists them.
COMPRESSORS = ("gzip", "zstd", "xz", "lz4", "none")

# Magic bytes the kernel's decompress_method() recognises.
MAGICS = (
    (b"\x1f\x8b", "gzip"),
    (b"\x1f\x9e", "gzip"),
    (b"BZh", "bzip2"),
    (b"\x5d\x00\x00", "lzma"),
    (b"\xfd7zXZ\x00", "xz"),
    (b"\x89LZO", "lzo"),
    (b"\x02\x21\x4c\x18", "lz4"),
    (b"\x28\xb5\x2f\xfd", "zstd"),
)

ZSTD_MAGIC = 0xFD2FB528
LZ4_LEGACY_MAGIC = 0x184C2102
# lz4 legacy frames hold blocks of at most 8 MiB; a compressed block is never
# bigger than LZ4_compressBound of that.
_LZ4_LEGACY_MAX_BLOCK = 8 << 20
_LZ4_LEGACY_BOUND = _LZ4_LEGACY_MAX_BLOCK + _LZ4_LEGACY_MAX_BLOCK // 255 + 16

ZSTD_FRAME_HEADER = Struct(
    "magic" / Int32ul,
    "descriptor"
    / BitStruct(
        "content_size_flag" / BitsInteger(2),
        "single_segment" / Flag,
        "unused" / Flag,
        "reserved" / Flag,
        "checksum" / Flag,
        "dictionary_id_flag" / BitsInteger(2),
    ),
    "window_descriptor" / If(lambda ctx: not ctx.descriptor.single_segment, Int8ul),
    "dictionary_id" / Bytes(lambda ctx: (0, 1, 2, 4)[ctx.descriptor.dictionary_id_flag]),
    "content_size"
    / Bytes(
        lambda ctx: (int(ctx.descriptor.single_segment), 2, 4, 8)[ctx.descriptor.content_size_flag]
    ),
)

# 3 bytes, little-endian: last-block bit, 2-bit type, 21-bit size.
ZSTD_BLOCK_HEADER = ByteSwapped(
    BitStruct("size" / BitsInteger(21), "type" / BitsInteger(2), "last" / Flag)
)
_ZSTD_RAW, _ZSTD_RLE, _ZSTD_COMPRESSED = 0, 1, 2

# Frames with magic 0x184D2A50..5F carry metadata the decoder skips.
ZSTD_SKIPPABLE_HEADER = Struct("magic" / Int32ul, "size" / Int32ul)


@dataclass(frozen=True)
class Stream:
    """One compressed stream: its method, the bytes it took, and its content."""

    method: str
    length: int
    content: bytes


def detect(data: bytes | memoryview, offset: int = 0) -> str | None:
    head = bytes(data[offset : offset + 6])
    for magic, method in MAGICS:
        if head.startswith(magic):
            return method
    return None


def compress(data: bytes, method: str) -> bytes:
    """`data` compressed so the kernel can unpack it (xz with CRC32, lz4 in legacy format)."""
    if method == "none":
        return data
    if method == "gzip":
        return gzip.compress(data, compresslevel=6, mtime=0)
    if method == "xz":
        # The kernel's xz decoder knows CRC32 and no check, not the default CRC64.
        return lzma.compress(data, format=lzma.FORMAT_XZ, check=lzma.CHECK_CRC32)
    if method == "zstd":
        return _compress_with(["zstd", "-q", "-c", "-9", "-T0"], data)
    if method == "lz4":
        return _compress_with(["lz4", "-q", "-c", "-l"], data)
    raise BootkitError(
        f"unknown compression {method!r}", hint=f"use one of {', '.join(COMPRESSORS)}"
    )


def decompress_stream(data: bytes, offset: int) -> Stream:
    """Decompress the one stream starting at `offset` and say how long it was."""
    method = detect(data, offset)
    view = memoryview(data)[offset:]
    if method == "gzip":
        gz = zlib.decompressobj(wbits=zlib.MAX_WBITS | 16)
        return _finish(method, view, gz, gz.decompress(view))
    if method in ("xz", "lzma"):
        fmt = lzma.FORMAT_XZ if method == "xz" else lzma.FORMAT_ALONE
        xz = lzma.LZMADecompressor(fmt)
        return _finish(method, view, xz, _lzma_decode(xz, view, offset))
    if method == "bzip2":
        bz = bz2.BZ2Decompressor()
        return _finish(method, view, bz, bz.decompress(view))
    if method == "zstd":
        length = zstd_stream_length(view)
        return Stream(method, length, _decompress_with(["zstd", "-q", "-d", "-c"], view[:length]))
    if method == "lz4":
        length = lz4_legacy_length(view)
        return Stream(method, length, _decompress_with(["lz4", "-q", "-d", "-c"], view[:length]))
    if method is None:
        raise BootkitError(
            f"unrecognised data at offset {offset}: neither cpio nor a known compression"
        )
    raise BootkitError(f"{method}-compressed segment at offset {offset} cannot be read by bootkit")


def _lzma_decode(decoder: lzma.LZMADecompressor, view: memoryview, offset: int) -> bytes:
    try:
        return decoder.decompress(view)
    except lzma.LZMAError as err:
        raise BootkitError(f"corrupt xz/lzma stream at offset {offset}: {err}") from err


class _Decoder(Protocol):
    """What zlib, lzma and bz2 decompressors tell once a stream is decoded."""

    @property
    def eof(self) -> bool: ...

    @property
    def unused_data(self) -> bytes: ...


def _finish(method: str, view: memoryview, decoder: _Decoder, content: bytes) -> Stream:
    if not decoder.eof:
        raise BootkitError(f"{method} stream is truncated")
    length = len(view) - len(decoder.unused_data)
    return Stream(method, length, content)


def zstd_stream_length(view: memoryview) -> int:
    """Bytes taken by the consecutive zstd frames (and skippable frames) at the start of `view`."""
    pos = 0
    try:
        while pos + 4 <= len(view):
            magic = Int32ul.parse(view[pos : pos + 4])
            if magic & 0xFFFFFFF0 == 0x184D2A50:
                skippable = ZSTD_SKIPPABLE_HEADER.parse(view[pos : pos + 8])
                pos += ZSTD_SKIPPABLE_HEADER.sizeof() + skippable.size
                continue
            if magic != ZSTD_MAGIC:
                break
            pos = _zstd_frame_end(view, pos)
    except ConstructError as err:
        raise BootkitError(f"corrupt zstd frame: {err}") from err
    if pos == 0 or pos > len(view):
        raise BootkitError("zstd stream is truncated")
    return pos


def _zstd_frame_end(view: memoryview, pos: int) -> int:
    header = ZSTD_FRAME_HEADER.parse(view[pos : pos + 18])
    pos += 4 + 1 + (0 if header.descriptor.single_segment else 1)
    pos += len(header.dictionary_id) + len(header.content_size)
    while True:
        block = ZSTD_BLOCK_HEADER.parse(view[pos : pos + 3])
        if block.type == 3:
            raise BootkitError("corrupt zstd stream (reserved block type)")
        pos += 3 + (1 if block.type == _ZSTD_RLE else block.size)
        if block.last:
            break
    if header.descriptor.checksum:
        pos += 4
    return pos


def lz4_legacy_length(view: memoryview) -> int:
    """Bytes taken by the lz4 legacy-format stream(s) at the start of `view`.

    The format has no end marker: it ends where the data ends or where the
    next word is neither a plausible block size nor a new stream's magic,
    which is how the kernel's unlz4 decides too.
    """
    pos = 0
    while pos + 4 <= len(view):
        word = Int32ul.parse(view[pos : pos + 4])
        if word == LZ4_LEGACY_MAGIC:
            pos += 4
            continue
        if word == 0 or word > _LZ4_LEGACY_BOUND or pos + 4 + word > len(view):
            break
        pos += 4 + word
    return pos


def _compress_with(argv: list[str], data: bytes) -> bytes:
    method = argv[0]
    try:
        return process.run(argv, f"{method} compression", input=data).stdout
    except process.MissingProgram as err:
        raise BootkitError(
            f"{method} compression needs the program {err.program}, which is not installed",
            hint=f"{err.hint}, or use gzip compression",
        ) from None


def _decompress_with(argv: list[str], data: memoryview) -> bytes:
    return process.run(argv, f"{argv[0]} decompression", input=bytes(data)).stdout
