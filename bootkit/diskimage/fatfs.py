"""FAT32 filesystems inside a disk image file, made and read with mtools (no mounts, no root).

mtools addresses a filesystem that starts `offset` bytes into a file as
`image@@offset`; everything here goes through that one spelling.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from construct import Bytes, Const, Int32ul, Padding, Struct

from bootkit.base import process
from bootkit.errors import BootkitError

SECTOR_SIZE = 512
# FAT32 needs at least 65525 clusters; with 512-byte clusters that is ~33 MiB.
MIN_FAT32_SIZE = 34 * (1 << 20)

# Without a config of their own, mtools still read ~/.mtoolsrc and refuse
# images whose geometry does not look like a floppy or hard disk.
_ENV = {"MTOOLS_SKIP_CHECK": "1", "MTOOLSRC": "/dev/null"}

# The part of a FAT32 boot sector (BPB + extended BPB) that identifies the volume.
Fat32BootSector = Struct(
    Padding(0x43),
    "volume_id" / Int32ul,
    "volume_label" / Bytes(11),
    "fs_type" / Const(b"FAT32   "),
    Padding(420),
    "signature" / Const(b"\x55\xaa"),
)


def _drive(image: Path, offset: int) -> str:
    return f"{image}@@{offset}"


def format_fat32(image: Path, offset: int, size: int, label: str, serial: int) -> None:
    """Make an empty FAT32 filesystem of `size` bytes at `offset` in `image`."""
    if size < MIN_FAT32_SIZE:
        raise BootkitError(
            f"a FAT32 filesystem needs at least {MIN_FAT32_SIZE >> 20} MiB, got {size >> 20} MiB",
            hint="give the ESP more room",
        )
    process.run(
        [
            "mformat",
            "-i", _drive(image, offset),
            "-F",
            "-T", str(size // SECTOR_SIZE),
            # Hidden sectors = where the partition starts, as a partitioning tool writes it.
            "-H", str(offset // SECTOR_SIZE),
            "-v", label[:11],
            "-N", f"{serial & 0xFFFFFFFF:08x}",
            "::",
        ],
        "formatting the ESP",
        env=_ENV,
    )


def _check_tree(tree: Path) -> None:
    """Refuse what FAT cannot hold, and never follow a symlink out of `tree` (mcopy would)."""
    for dirpath, dirnames, filenames in os.walk(tree):
        seen: dict[str, str] = {}
        for name in dirnames + filenames:
            path = Path(dirpath, name)
            mode = path.lstat().st_mode
            if not (stat.S_ISDIR(mode) or stat.S_ISREG(mode)):
                raise BootkitError(f"{path}: FAT holds only regular files and directories")
            # FAT compares names case-insensitively: two names differing only by
            # case would silently become one file.
            other = seen.setdefault(name.lower(), name)
            if other != name:
                raise BootkitError(
                    f"{dirpath}: {other!r} and {name!r} would be the same file on FAT"
                )


def copy_tree_in(image: Path, offset: int, tree: Path) -> None:
    """Copy the content of directory `tree` into the root of the FAT filesystem."""
    _check_tree(tree)
    entries = sorted(tree.iterdir())
    if not entries:
        return
    process.run(
        ["mcopy", "-s", "-p", "-m", "-i", _drive(image, offset), *map(str, entries), "::/"],
        "copying files to the ESP",
        env=_ENV,
    )


def copy_tree_out(image: Path, offset: int, dest: Path) -> None:
    """Copy everything in the FAT filesystem into the existing directory `dest`."""
    listing = process.run(
        ["mdir", "-b", "-i", _drive(image, offset), "::/"],
        "listing the ESP",
        env=_ENV,
    )
    if not listing.stdout.strip():
        return
    process.run(
        ["mcopy", "-s", "-p", "-m", "-n", "-i", _drive(image, offset), "::/*", str(dest)],
        "copying files from the ESP",
        env=_ENV,
    )


def read_volume_id(image: Path, offset: int) -> tuple[int, str]:
    """The volume serial number (FAT's filesystem 'UUID') and label, from the boot sector."""
    with open(image, "rb") as disk:
        disk.seek(offset)
        try:
            sector = Fat32BootSector.parse(disk.read(SECTOR_SIZE))
        except Exception:
            raise BootkitError(f"{image}: no FAT32 filesystem at offset {offset}") from None
    return sector.volume_id, sector.volume_label.decode("ascii", errors="replace").rstrip()
