"""GRUB's environment block: exactly 1024 bytes, a header line, `key=value` lines, '#' padding.

GRUB's `save_env` rewrites the block in place and never changes its size; bootkit
writes it the same way, so GRUB can keep using the file's existing disk blocks.
"""

from __future__ import annotations

import os
from pathlib import Path

from construct import Bytes, Const, ConstructError, Struct

from bootkit.base.files import atomic_write
from bootkit.errors import BootkitError

BLOCK_SIZE = 1024
HEADER = b"# GRUB Environment Block\n"

GrubEnvBlock = Struct(
    "header" / Const(HEADER),
    "body" / Bytes(BLOCK_SIZE - len(HEADER)),
)


def encode(env: dict[str, str]) -> bytes:
    body = b"".join(_line(k, v) for k, v in env.items())
    room = BLOCK_SIZE - len(HEADER)
    if len(body) > room:
        raise BootkitError(
            f"GRUB environment too large: {len(body)} bytes of variables, room for {room}"
        )
    block: bytes = GrubEnvBlock.build({"body": body + b"#" * (room - len(body))})
    return block


def decode(data: bytes, source: str = "grubenv") -> dict[str, str]:
    if len(data) != BLOCK_SIZE:
        raise BootkitError(
            f"{source}: a GRUB environment block is {BLOCK_SIZE} bytes, not {len(data)}"
        )
    try:
        block = GrubEnvBlock.parse(data)
    except ConstructError as err:
        raise BootkitError(f"{source}: not a GRUB environment block ({err})") from None
    env: dict[str, str] = {}
    for raw in _lines(block.body):
        if not raw or raw.startswith(b"#"):
            continue
        key, sep, value = raw.partition(b"=")
        if not sep:
            raise BootkitError(f"{source}: malformed line {raw!r}")
        try:
            env[key.decode()] = _unescape(value.decode())
        except UnicodeDecodeError:
            raise BootkitError(f"{source}: line {raw!r} is not UTF-8") from None
    return env


def _lines(body: bytes) -> list[bytes]:
    """Split at each newline that no backslash escapes, as GRUB reads the block."""
    out: list[bytes] = []
    start = i = 0
    while i < len(body):
        if body[i] == 0x5C:  # a backslash takes the next byte with it, newline included
            i += 2
            continue
        if body[i] == 0x0A:
            out.append(body[start:i])
            start = i + 1
        i += 1
    out.append(body[start:])
    return out


def _line(key: str, value: str) -> bytes:
    if not key or "=" in key or "\n" in key:
        raise BootkitError(f"invalid GRUB environment variable name {key!r}")
    # GRUB escapes backslash and newline with a backslash.
    escaped = value.replace("\\", "\\\\").replace("\n", "\\\n")
    return f"{key}={escaped}\n".encode()


def _unescape(value: str) -> str:
    out, it = [], iter(value)
    for c in it:
        out.append(next(it, "") if c == "\\" else c)
    return "".join(out)


def read(path: Path) -> dict[str, str]:
    try:
        return decode(path.read_bytes(), str(path))
    except FileNotFoundError:
        return {}


def write(path: Path, env: dict[str, str]) -> None:
    """Store `env`: in place when a block already exists (as GRUB does), else create it atomically."""
    data = encode(env)
    try:
        fd = os.open(path, os.O_WRONLY)
    except FileNotFoundError:
        atomic_write(path, data)
        return
    try:
        if os.fstat(fd).st_size != BLOCK_SIZE:
            os.close(fd)
            fd = -1
            atomic_write(path, data)
            return
        os.pwrite(fd, data, 0)
        os.fsync(fd)
    finally:
        if fd >= 0:
            os.close(fd)
