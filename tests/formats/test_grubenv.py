"""GRUB's environment block, checked against GRUB's own grub-editenv."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from bootkit.errors import BootkitError
from bootkit.formats import grubenv

HEADER = b"# GRUB Environment Block\n"
SAMPLE = {
    "next_entry": "bootkit-fedora-3-abcdef01",
    "boot_success": "0",
    "path": "C:\\efi\\grub",
    "two_lines": "first\nsecond",
    "empty": "",
    "unicode": "Fédora ✓",
}

needs_grub_editenv = pytest.mark.skipif(
    shutil.which("grub-editenv") is None, reason="grub-editenv (grub-common) not installed"
)


def test_block_is_1024_bytes_with_header_and_padding() -> None:
    block = grubenv.encode({"a": "1"})
    assert len(block) == 1024
    assert block.startswith(HEADER + b"a=1\n#")
    assert block.rstrip(b"#") == HEADER + b"a=1\n"
    assert grubenv.encode({}) == HEADER + b"#" * (1024 - len(HEADER))


def test_round_trip_with_escapes() -> None:
    block = grubenv.encode(SAMPLE)
    assert b"path=C:\\\\efi\\\\grub\n" in block
    assert b"two_lines=first\\\nsecond\n" in block
    assert grubenv.decode(block) == SAMPLE


def test_too_large() -> None:
    with pytest.raises(BootkitError, match="too large"):
        grubenv.encode({"big": "x" * 1000})
    # Exactly full is fine.
    room = 1024 - len(HEADER) - len("k=\n")
    assert grubenv.decode(grubenv.encode({"k": "y" * room})) == {"k": "y" * room}


@pytest.mark.parametrize("key", ["", "a=b", "a\nb"])
def test_invalid_names(key: str) -> None:
    with pytest.raises(BootkitError, match="variable name"):
        grubenv.encode({key: "1"})


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"# GRUB Environment Block\n", "1024 bytes"),
        (b"\x00" * 1024, "not a GRUB environment block"),
        (b"# GRUB Environment Bloc!\n" + b"#" * 999, "not a GRUB environment block"),
        (HEADER + b"no equals sign\n" + b"#" * (1024 - len(HEADER) - 15), "malformed line"),
        (HEADER + b"k=\xff\xfe\n" + b"#" * (1024 - len(HEADER) - 5), "not UTF-8"),
    ],
)
def test_decode_refuses_garbage(data: bytes, message: str) -> None:
    with pytest.raises(BootkitError, match=message):
        grubenv.decode(data, "/efi/bootkit/grub/grubenv")


def test_write_in_place_keeps_the_inode(tmp_path: Path) -> None:
    path = tmp_path / "grubenv"
    grubenv.write(path, {"a": "1"})
    ino = path.stat().st_ino
    grubenv.write(path, {"a": "2", "b": "3"})
    assert path.stat().st_ino == ino
    assert grubenv.read(path) == {"a": "2", "b": "3"}
    assert path.stat().st_size == 1024
    assert not list(tmp_path.glob(".*"))


def test_write_replaces_a_file_of_the_wrong_size(tmp_path: Path) -> None:
    path = tmp_path / "grubenv"
    path.write_bytes(b"short")
    grubenv.write(path, {"a": "1"})
    assert grubenv.read(path) == {"a": "1"}


def test_read_missing_is_empty(tmp_path: Path) -> None:
    assert grubenv.read(tmp_path / "nope") == {}


def _editenv(path: Path, *args: str) -> str:
    proc = subprocess.run(
        ["grub-editenv", str(path), *args], capture_output=True, text=True, check=True
    )
    return proc.stdout


@needs_grub_editenv
def test_grub_editenv_reads_what_bootkit_writes(tmp_path: Path) -> None:
    path = tmp_path / "grubenv"
    grubenv.write(path, SAMPLE)
    assert _editenv(path, "list") == "".join(f"{k}={v}\n" for k, v in SAMPLE.items())
    # And changes it in place, which bootkit then reads.
    _editenv(path, "set", "boot_success=1", "added=yes")
    _editenv(path, "unset", "empty")
    expected = {k: v for k, v in SAMPLE.items() if k != "empty"}
    expected |= {"boot_success": "1", "added": "yes"}
    assert grubenv.read(path) == expected


@needs_grub_editenv
def test_bootkit_reads_what_grub_editenv_writes(tmp_path: Path) -> None:
    path = tmp_path / "grubenv"
    _editenv(path, "create")
    assert grubenv.read(path) == {}
    _editenv(path, "set", *(f"{k}={v}" for k, v in SAMPLE.items()))
    assert path.stat().st_size == 1024
    assert grubenv.read(path) == SAMPLE
    # bootkit's rewrite is in place, as GRUB's own.
    ino = path.stat().st_ino
    grubenv.write(path, {"next_entry": "x"})
    assert path.stat().st_ino == ino
    assert _editenv(path, "list") == "next_entry=x\n"
    assert os.stat(path).st_size == 1024
