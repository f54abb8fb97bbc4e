"""GPT: what bootkit writes, sfdisk reads the same way, and the other way round."""

from __future__ import annotations

import json
import shutil
import subprocess
import uuid
import zlib
from pathlib import Path

import pytest

from bootkit.errors import BootkitError
from bootkit.formats import gpt

MIB = 1 << 20
needs_sfdisk = pytest.mark.skipif(shutil.which("sfdisk") is None, reason="sfdisk not installed")


def blank_disk(path: Path, size: int) -> Path:
    with open(path, "wb") as f:
        f.truncate(size)
    return path


def two_partitions(size: int = 100 * MIB) -> gpt.PartitionTable:
    return gpt.lay_out(
        size,
        [
            gpt.PartitionSpec("esp", gpt.ESP_TYPE, 40 * MIB),
            gpt.PartitionSpec("root", gpt.LINUX_ROOT_X86_64_TYPE),
        ],
    )


def test_layout_aligns_partitions_and_leaves_room_for_the_backup() -> None:
    table = two_partitions()
    esp, root = table.partitions
    assert esp.offset == MIB and esp.size == 40 * MIB
    assert root.offset == 41 * MIB and root.offset % MIB == 0
    assert root.size % MIB == 0
    assert root.last_lba <= gpt.last_usable_lba(table.disk_sectors)


def test_written_table_reads_back_identically(tmp_path: Path) -> None:
    disk = blank_disk(tmp_path / "disk.img", 100 * MIB)
    table = two_partitions()
    gpt.write_partition_table(disk, table)
    assert gpt.read_partition_table(disk) == table


@needs_sfdisk
def test_sfdisk_reads_what_bootkit_writes(tmp_path: Path) -> None:
    disk = blank_disk(tmp_path / "disk.img", 100 * MIB)
    table = two_partitions()
    gpt.write_partition_table(disk, table)
    verify = subprocess.run(["sfdisk", "--verify", str(disk)], capture_output=True, text=True)
    assert verify.returncode == 0 and "No errors detected" in verify.stdout, verify.stdout
    dump = subprocess.run(["sfdisk", "--json", str(disk)], capture_output=True, text=True,
                          check=True)
    pt = json.loads(dump.stdout)["partitiontable"]
    assert uuid.UUID(pt["id"]) == table.disk_guid
    seen = [
        (p["start"], p["size"], uuid.UUID(p["type"]), uuid.UUID(p["uuid"]), p["name"])
        for p in pt["partitions"]
    ]
    expected = [
        (p.first_lba, p.last_lba - p.first_lba + 1, p.type_guid, p.guid, p.name)
        for p in table.partitions
    ]
    assert seen == expected


@needs_sfdisk
def test_bootkit_reads_what_sfdisk_writes(tmp_path: Path) -> None:
    disk = blank_disk(tmp_path / "disk.img", 64 * MIB)
    script = (
        "label: gpt\n"
        "label-id: 0D5A6E4B-3C1D-4C7E-9E5B-2B8F1A3C4D5E\n"
        "start=2048, size=20480, type=C12A7328-F81F-11D2-BA4B-00A0C93EC93B, name=\"EFI system\"\n"
        "start=22528, type=4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709, name=root\n"
    )
    subprocess.run(["sfdisk", "-q", str(disk)], input=script, text=True, check=True)
    table = gpt.read_partition_table(disk)
    assert table.disk_guid == uuid.UUID("0d5a6e4b-3c1d-4c7e-9e5b-2b8f1a3c4d5e")
    esp = table.find(gpt.ESP_TYPE)
    root = table.find(gpt.LINUX_ROOT_X86_64_TYPE)
    assert (esp.first_lba, esp.size, esp.name) == (2048, 20480 * 512, "EFI system")
    assert root.first_lba == 22528 and root.name == "root"


def test_protective_mbr_covers_the_disk(tmp_path: Path) -> None:
    disk = blank_disk(tmp_path / "disk.img", 100 * MIB)
    gpt.write_partition_table(disk, two_partitions())
    mbr = gpt.ProtectiveMbr.parse(disk.read_bytes()[:512])
    first = mbr.partitions[0]
    assert first.os_type == 0xEE and first.starting_lba == 1
    assert first.size_in_lba == 100 * MIB // 512 - 1
    assert all(p.os_type == 0 for p in mbr.partitions[1:])


def _corrupt(disk: Path, offset: int) -> None:
    with open(disk, "r+b") as f:
        f.seek(offset)
        byte = f.read(1)
        f.seek(offset)
        f.write(bytes([byte[0] ^ 0xFF]))


def test_damaged_primary_header_falls_back_to_the_backup(tmp_path: Path) -> None:
    disk = blank_disk(tmp_path / "disk.img", 100 * MIB)
    table = two_partitions()
    gpt.write_partition_table(disk, table)
    _corrupt(disk, 512 + 24)  # my_lba, inside the header CRC's range
    assert gpt.read_partition_table(disk) == table


def test_damaged_entries_of_both_copies_are_refused(tmp_path: Path) -> None:
    disk = blank_disk(tmp_path / "disk.img", 100 * MIB)
    table = two_partitions()
    gpt.write_partition_table(disk, table)
    _corrupt(disk, 2 * 512 + 56)  # primary entry array: first entry's name
    backup_entries = (table.disk_sectors - 1 - gpt.ENTRY_ARRAY_SECTORS) * 512
    _corrupt(disk, backup_entries + 56)
    with pytest.raises(BootkitError, match="fails its CRC32"):
        gpt.read_partition_table(disk)


def test_header_crc_is_over_the_header_with_its_crc_zeroed(tmp_path: Path) -> None:
    disk = blank_disk(tmp_path / "disk.img", 100 * MIB)
    gpt.write_partition_table(disk, two_partitions())
    raw = disk.read_bytes()[512:512 + 92]
    header = gpt.GptHeader.parse(raw)
    zeroed = raw[:16] + b"\0\0\0\0" + raw[20:]
    assert zlib.crc32(zeroed) == header.header_crc32


def test_disk_without_gpt_is_refused(tmp_path: Path) -> None:
    disk = blank_disk(tmp_path / "disk.img", 10 * MIB)
    with pytest.raises(BootkitError, match="no valid GPT"):
        gpt.read_partition_table(disk)


def test_partitions_that_do_not_fit_are_refused() -> None:
    with pytest.raises(BootkitError, match="does not fit"):
        gpt.lay_out(50 * MIB, [gpt.PartitionSpec("esp", gpt.ESP_TYPE, 60 * MIB)])


def test_writing_to_a_disk_of_another_size_is_refused(tmp_path: Path) -> None:
    disk = blank_disk(tmp_path / "disk.img", 64 * MIB)
    with pytest.raises(BootkitError, match="laid out for"):
        gpt.write_partition_table(disk, two_partitions(100 * MIB))
