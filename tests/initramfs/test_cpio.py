"""cpio newc: our writer against GNU cpio's reader, our reader against GNU cpio's writer."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
from pathlib import Path

import pytest

from bootkit.errors import BootkitError
from bootkit.initramfs import cpio

needs_gnu_cpio = pytest.mark.skipif(shutil.which("cpio") is None, reason="GNU cpio not installed")


def _members() -> list[cpio.Member]:
    # Names and sizes of every length mod 4 exercise both paddings.
    members = [cpio.directory("d"), cpio.directory("d/sub", 0o700)]
    for n in range(8):
        members.append(cpio.regular_file(f"d/{'n' * (n + 1)}", bytes(range(n)) * 3, 0o640 + n % 2))
    members.append(cpio.regular_file("d/sub/exe", b"#!/bin/sh\necho hi\n", 0o755))
    members.append(cpio.symlink("d/link", "sub/exe"))
    members.append(cpio.regular_file("d/empty", b""))
    return members


@needs_gnu_cpio
def test_gnu_cpio_extracts_what_we_write(tmp_path: Path) -> None:
    archive = cpio.archive_bytes(_members())
    out = tmp_path / "out"
    out.mkdir()
    subprocess.run(
        ["cpio", "-i", "-d", "--quiet", "--no-absolute-filenames"],
        input=archive,
        cwd=out,
        check=True,
    )
    for member in _members():
        path = out / member.name
        st = os.lstat(path)
        assert stat.S_IFMT(st.st_mode) == stat.S_IFMT(member.mode), member.name
        if member.kind == "file":
            assert path.read_bytes() == member.data
            assert stat.S_IMODE(st.st_mode) == stat.S_IMODE(member.mode)
        elif member.kind == "symlink":
            assert os.readlink(path) == member.link_target


@needs_gnu_cpio
def test_gnu_cpio_lists_devices_we_write() -> None:
    archive = cpio.archive_bytes([cpio.directory("dev"), cpio.char_device("dev/console", 5, 1)])
    listing = subprocess.run(
        ["cpio", "-t", "-v", "--quiet"], input=archive, capture_output=True, check=True
    ).stdout.decode()
    line = next(line for line in listing.splitlines() if line.endswith("dev/console"))
    assert line.startswith("crw-------")
    assert "5," in line and " 1 " in line


@needs_gnu_cpio
def test_we_read_what_gnu_cpio_writes(tmp_path: Path) -> None:
    src = tmp_path / "src"
    (src / "a/b").mkdir(parents=True)
    (src / "a/b/file").write_bytes(b"x" * 1001)
    (src / "a/odd name").write_bytes(b"spaces\n")
    (src / "a/b/exe").write_bytes(b"\x7fELF")
    (src / "a/b/exe").chmod(0o755)
    os.symlink("../b/file", src / "a/b/link")
    names = sorted(str(p.relative_to(src)) for p in src.rglob("*"))
    archive = subprocess.run(
        ["cpio", "-o", "-H", "newc", "--quiet"],
        input="\n".join(names).encode(),
        cwd=src,
        capture_output=True,
        check=True,
    ).stdout

    members = {m.name: m for m in cpio.read_archives(archive)}

    assert sorted(members) == names
    for name in names:
        path = src / name
        st = os.lstat(path)
        assert members[name].mode == st.st_mode, name
        if path.is_symlink():
            assert members[name].link_target == os.readlink(path)
        elif path.is_file():
            assert members[name].data == path.read_bytes()


def test_round_trip_keeps_every_field() -> None:
    members = [*_members(), cpio.char_device("console", 5, 1)]
    data = cpio.archive_bytes(members)
    assert len(data) % 4 == 0
    back, end = cpio.read_archive(data)
    assert end == len(data)
    assert [(m.name, m.mode, m.data, m.rdev) for m in back] == [
        (m.name, m.mode, m.data, m.rdev) for m in members
    ]
    assert len({m.ino for m in back}) == len(back)


def test_output_is_reproducible() -> None:
    assert cpio.archive_bytes(_members()) == cpio.archive_bytes(_members())


def test_archives_separated_by_nul_padding_are_read_in_order() -> None:
    first = cpio.archive_bytes([cpio.regular_file("early", b"1")])
    second = cpio.archive_bytes([cpio.regular_file("main", b"2")])
    data = first + b"\0" * 512 + second
    assert [m.name for m in cpio.read_archives(data)] == ["early", "main"]


def test_truncated_archive_is_an_error() -> None:
    data = cpio.archive_bytes([cpio.regular_file("f", b"x" * 100)])
    with pytest.raises(BootkitError, match="truncated"):
        cpio.read_archive(data[:150])
    with pytest.raises(BootkitError, match="truncated"):
        cpio.read_archive(data[: len(data) - 20])


def test_junk_after_archive_is_an_error() -> None:
    data = cpio.archive_bytes([cpio.regular_file("f", b"x")]) + b"junk"
    with pytest.raises(BootkitError, match="junk"):
        list(cpio.read_archives(data))


def test_corrupt_header_is_an_error() -> None:
    data = bytearray(cpio.archive_bytes([cpio.regular_file("f", b"x")]))
    data[6:14] = b"zzzzzzzz"
    with pytest.raises(BootkitError, match="corrupt"):
        cpio.read_archive(bytes(data))


def test_trailer_name_is_refused_as_a_member() -> None:
    with pytest.raises(BootkitError):
        cpio.archive_bytes([cpio.regular_file(cpio.TRAILER, b"")])
