"""GUID Partition Tables (UEFI spec, chapter 5): declared, written and read back.

A disk image gets a protective MBR in sector 0, the primary header in sector 1
followed by the partition entry array, and a backup copy of both at the end of
the disk (entries first, header in the very last sector). Both headers and the
entry array carry CRC32s; a reader trusts a table only when they match.
"""

from __future__ import annotations

import os
import uuid
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from construct import (
    Adapter,
    Array,
    Bytes,
    Const,
    Int8ul,
    Int16ul,
    Int32ul,
    Int64ul,
    PaddedString,
    Padding,
    Struct,
)

from bootkit.errors import BootkitError

SECTOR_SIZE = 512
ENTRY_COUNT = 128
ENTRY_SIZE = 128
ENTRY_ARRAY_SECTORS = ENTRY_COUNT * ENTRY_SIZE // SECTOR_SIZE
MIB = 1 << 20

# Partition type GUIDs (UEFI spec; UAPI Discoverable Partitions Specification).
ESP_TYPE = uuid.UUID("c12a7328-f81f-11d2-ba4b-00a0c93ec93b")
LINUX_ROOT_X86_64_TYPE = uuid.UUID("4f68bce3-e8cd-4db1-96e7-fbcaf984b709")
LINUX_FILESYSTEM_TYPE = uuid.UUID("0fc63daf-8483-4772-8e79-3d69d8477de4")


class _GuidAdapter(Adapter):  # type: ignore[misc]  # construct is untyped
    """GUIDs are stored mixed-endian: the first three fields little-endian."""

    def _decode(self, obj: bytes, context: object, path: object) -> uuid.UUID:
        return uuid.UUID(bytes_le=obj)

    def _encode(self, obj: uuid.UUID, context: object, path: object) -> bytes:
        return obj.bytes_le


Guid = _GuidAdapter(Bytes(16))

MbrPartitionRecord = Struct(
    "boot_indicator" / Int8ul,
    "start_chs" / Bytes(3),
    "os_type" / Int8ul,
    "end_chs" / Bytes(3),
    "starting_lba" / Int32ul,
    "size_in_lba" / Int32ul,
)

ProtectiveMbr = Struct(
    "boot_code" / Bytes(440),
    "disk_signature" / Int32ul,
    "unknown" / Int16ul,
    "partitions" / Array(4, MbrPartitionRecord),
    "signature" / Const(b"\x55\xaa"),
)

GptHeader = Struct(
    "signature" / Const(b"EFI PART"),
    "revision" / Const(0x00010000, Int32ul),
    "header_size" / Const(92, Int32ul),
    "header_crc32" / Int32ul,
    Padding(4),
    "my_lba" / Int64ul,
    "alternate_lba" / Int64ul,
    "first_usable_lba" / Int64ul,
    "last_usable_lba" / Int64ul,
    "disk_guid" / Guid,
    "partition_entry_lba" / Int64ul,
    "number_of_partition_entries" / Int32ul,
    "size_of_partition_entry" / Int32ul,
    "partition_entry_array_crc32" / Int32ul,
)

GptEntry = Struct(
    "type_guid" / Guid,
    "unique_guid" / Guid,
    "starting_lba" / Int64ul,
    "ending_lba" / Int64ul,
    "attributes" / Int64ul,
    "name" / PaddedString(72, "utf_16_le"),
)

GptEntryArray = Array(ENTRY_COUNT, GptEntry)

_UNUSED_TYPE = uuid.UUID(int=0)
_PROTECTIVE_OS_TYPE = 0xEE


@dataclass(frozen=True)
class Partition:
    """One used partition entry; LBAs are inclusive, as on disk."""

    type_guid: uuid.UUID
    guid: uuid.UUID
    first_lba: int
    last_lba: int
    name: str = ""
    attributes: int = 0

    @property
    def offset(self) -> int:
        return self.first_lba * SECTOR_SIZE

    @property
    def size(self) -> int:
        return (self.last_lba - self.first_lba + 1) * SECTOR_SIZE


@dataclass(frozen=True)
class PartitionTable:
    disk_guid: uuid.UUID
    disk_sectors: int
    partitions: tuple[Partition, ...]

    def find(self, type_guid: uuid.UUID) -> Partition:
        for part in self.partitions:
            if part.type_guid == type_guid:
                return part
        raise BootkitError(
            f"the disk has no partition of type {type_guid}",
            hint="is it a disk image made by 'bootkit image create'?",
        )


@dataclass(frozen=True)
class PartitionSpec:
    """A partition to lay out: `size` in bytes, or None to take the rest of the disk."""

    name: str
    type_guid: uuid.UUID
    size: int | None = None
    guid: uuid.UUID | None = None


def first_usable_lba() -> int:
    return 2 + ENTRY_ARRAY_SECTORS


def last_usable_lba(disk_sectors: int) -> int:
    return disk_sectors - 2 - ENTRY_ARRAY_SECTORS


def lay_out(
    disk_size: int,
    specs: Sequence[PartitionSpec],
    align: int = MIB,
    disk_guid: uuid.UUID | None = None,
) -> PartitionTable:
    """Place partitions one after another, each starting on an `align` boundary."""
    if disk_size % SECTOR_SIZE:
        raise BootkitError(f"disk size {disk_size} is not a multiple of {SECTOR_SIZE} bytes")
    disk_sectors = disk_size // SECTOR_SIZE
    align_lba = align // SECTOR_SIZE
    last_usable = last_usable_lba(disk_sectors)
    next_lba = first_usable_lba()
    parts = []
    for index, spec in enumerate(specs):
        start = -(-next_lba // align_lba) * align_lba
        if spec.size is None:
            if index != len(specs) - 1:
                raise BootkitError("only the last partition may take the rest of the disk")
            # Keep the end aligned too, so the filesystem size is a round number.
            end = (last_usable + 1) // align_lba * align_lba - 1
        else:
            end = start + spec.size // SECTOR_SIZE - 1
        if end > last_usable or end < start:
            raise BootkitError(
                f"partition {spec.name!r} does not fit on a disk of {disk_size} bytes",
                hint="make the image larger",
            )
        parts.append(
            Partition(spec.type_guid, spec.guid or uuid.uuid4(), start, end, spec.name)
        )
        next_lba = end + 1
    return PartitionTable(disk_guid or uuid.uuid4(), disk_sectors, tuple(parts))


def _entry_array(table: PartitionTable) -> bytes:
    entries = [
        dict(
            type_guid=p.type_guid,
            unique_guid=p.guid,
            starting_lba=p.first_lba,
            ending_lba=p.last_lba,
            attributes=p.attributes,
            name=p.name,
        )
        for p in table.partitions
    ]
    empty = dict(
        type_guid=_UNUSED_TYPE,
        unique_guid=_UNUSED_TYPE,
        starting_lba=0,
        ending_lba=0,
        attributes=0,
        name="",
    )
    entries += [empty] * (ENTRY_COUNT - len(entries))
    return bytes(GptEntryArray.build(entries))


def _header(table: PartitionTable, primary: bool, entries_crc: int) -> bytes:
    last = table.disk_sectors - 1
    fields = dict(
        header_crc32=0,
        my_lba=1 if primary else last,
        alternate_lba=last if primary else 1,
        first_usable_lba=first_usable_lba(),
        last_usable_lba=last_usable_lba(table.disk_sectors),
        disk_guid=table.disk_guid,
        partition_entry_lba=2 if primary else last - ENTRY_ARRAY_SECTORS,
        number_of_partition_entries=ENTRY_COUNT,
        size_of_partition_entry=ENTRY_SIZE,
        partition_entry_array_crc32=entries_crc,
    )
    # The header CRC covers the header with its own CRC field zeroed.
    fields["header_crc32"] = zlib.crc32(GptHeader.build(fields))
    return bytes(GptHeader.build(fields)).ljust(SECTOR_SIZE, b"\0")


def _protective_mbr(disk_sectors: int) -> bytes:
    covered = min(disk_sectors - 1, 0xFFFFFFFF)
    record = dict(
        boot_indicator=0,
        start_chs=b"\x00\x02\x00",
        os_type=_PROTECTIVE_OS_TYPE,
        end_chs=b"\xff\xff\xff",
        starting_lba=1,
        size_in_lba=covered,
    )
    unused = dict(
        boot_indicator=0,
        start_chs=b"\0" * 3,
        os_type=0,
        end_chs=b"\0" * 3,
        starting_lba=0,
        size_in_lba=0,
    )
    return bytes(ProtectiveMbr.build(
        dict(boot_code=b"\0" * 440, disk_signature=0, unknown=0, partitions=[record] + [unused] * 3)
    ))


def write_partition_table(image: Path, table: PartitionTable) -> None:
    """Write the protective MBR, primary and backup GPT into `image` (its size must match)."""
    size = image.stat().st_size
    if size != table.disk_sectors * SECTOR_SIZE:
        raise BootkitError(
            f"{image} is {size} bytes, the partition table was laid out for "
            f"{table.disk_sectors * SECTOR_SIZE}"
        )
    entries = _entry_array(table)
    entries_crc = zlib.crc32(entries)
    last = table.disk_sectors - 1
    with open(image, "r+b") as disk:
        disk.seek(0)
        disk.write(_protective_mbr(table.disk_sectors))
        disk.write(_header(table, True, entries_crc))
        disk.write(entries)
        disk.seek((last - ENTRY_ARRAY_SECTORS) * SECTOR_SIZE)
        disk.write(entries)
        disk.write(_header(table, False, entries_crc))
        disk.flush()
        os.fsync(disk.fileno())


def _read_copy(disk: BinaryIO, header_lba: int, disk_sectors: int) -> PartitionTable:
    disk.seek(header_lba * SECTOR_SIZE)
    raw = disk.read(SECTOR_SIZE)
    try:
        header = GptHeader.parse(raw)
    except Exception as err:
        raise ValueError(f"no GPT header at LBA {header_lba}") from err
    zeroed = dict(header, header_crc32=0)
    if zlib.crc32(GptHeader.build(zeroed)) != header.header_crc32:
        raise ValueError(f"GPT header at LBA {header_lba} fails its CRC32")
    if header.my_lba != header_lba:
        raise ValueError(f"GPT header at LBA {header_lba} claims to be at {header.my_lba}")
    if header.size_of_partition_entry != ENTRY_SIZE:
        raise ValueError(f"unsupported GPT entry size {header.size_of_partition_entry}")
    disk.seek(header.partition_entry_lba * SECTOR_SIZE)
    array = disk.read(header.number_of_partition_entries * ENTRY_SIZE)
    if zlib.crc32(array) != header.partition_entry_array_crc32:
        raise ValueError(f"GPT entry array of the header at LBA {header_lba} fails its CRC32")
    entries = Array(header.number_of_partition_entries, GptEntry).parse(array)
    partitions = tuple(
        Partition(e.type_guid, e.unique_guid, e.starting_lba, e.ending_lba, e.name, e.attributes)
        for e in entries
        if e.type_guid != _UNUSED_TYPE
    )
    return PartitionTable(header.disk_guid, disk_sectors, partitions)


def read_partition_table(image: Path) -> PartitionTable:
    """Read the GPT of `image`, falling back to the backup copy when the primary is damaged."""
    size = image.stat().st_size
    disk_sectors = size // SECTOR_SIZE
    if disk_sectors < 2 * (2 + ENTRY_ARRAY_SECTORS):
        raise BootkitError(f"{image} is too small to hold a GPT disk ({size} bytes)")
    with open(image, "rb") as disk:
        try:
            return _read_copy(disk, 1, disk_sectors)
        except ValueError as primary_err:
            try:
                return _read_copy(disk, disk_sectors - 1, disk_sectors)
            except ValueError:
                raise BootkitError(
                    f"{image} holds no valid GPT partition table: {primary_err}",
                    hint="is it a disk image made by 'bootkit image create'?",
                ) from None
