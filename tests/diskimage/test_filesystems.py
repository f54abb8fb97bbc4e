"""The two filesystems of a disk image on their own: ext4 round trips, FAT rules, partition copies."""

from __future__ import annotations

import os
import shutil
import uuid
from pathlib import Path

import pytest
from support.helpers import snapshot

from bootkit.diskimage import ext4fs, ext4xattrs, fatfs
from bootkit.diskimage.edit import _copy_region
from bootkit.errors import BootkitError

MIB = 1 << 20
TOOLS = ("mformat", "mcopy", "mke2fs", "debugfs", "e2fsck")
pytestmark = pytest.mark.skipif(
    any(shutil.which(t) is None and not Path("/usr/sbin", t).exists() for t in TOOLS),
    reason="needs mtools and e2fsprogs",
)


def test_ext4_round_trip_keeps_owners_modes_links_and_special_files(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("owners and device nodes need root")
    src = tmp_path / "src"
    (src / "a/b").mkdir(parents=True)
    (src / "a/f").write_text("hi\n")
    os.link(src / "a/f", src / "a/b/g")
    os.link(src / "a/f", src / "name with space")
    (src / "a/b/link").symlink_to("../f")
    os.chown(src / "a/b", 1000, 1001)
    os.chmod(src / "a/b", 0o750)
    os.mkfifo(src / "fifo", 0o640)
    os.mknod(src / "null", 0o20666, os.makedev(1, 3))
    image = tmp_path / "fs.img"
    with open(image, "wb") as f:
        f.truncate(40 * MIB)
    fs_uuid = uuid.uuid4()
    ext4fs.make_ext4(image, MIB, 32 * MIB, src, "roundtrip", fs_uuid)
    sb = ext4fs.read_superblock(image, MIB)
    assert (sb.uuid, sb.label) == (fs_uuid, "roundtrip")
    out = tmp_path / "out"
    out.mkdir()
    ext4fs.extract_tree(image, MIB, out)
    (out / "lost+found").rmdir()
    assert snapshot(out) == snapshot(src)
    assert (out / "a/f").stat().st_ino == (out / "a/b/g").stat().st_ino == (
        out / "name with space").stat().st_ino
    st = (out / "a/b").stat()
    assert (st.st_uid, st.st_gid) == (1000, 1001)
    assert (out / "fifo").is_fifo()
    assert (out / "null").stat().st_rdev == os.makedev(1, 3)


def _set_xattrs(path: Path, attrs: dict[str, bytes]) -> None:
    for name, value in attrs.items():
        try:
            os.setxattr(path, name, value)
        except OSError as err:
            pytest.skip(f"cannot set {name} here: {err.strerror}")


def _xattrs_by_path(root: Path, xattrs: ext4xattrs.Xattrs) -> dict[str, dict[str, bytes]]:
    out = {}
    for path in [root, *root.rglob("*")]:
        attrs = xattrs.get(path.lstat().st_ino)
        if attrs:
            out[str(path.relative_to(root))] = dict(attrs)
    return out


# Short values are printed by debugfs, long ones fetched; quotes, backslashes, NULs.
FILE_XATTRS = {"user.short": b"hi", "user.long": bytes(range(256)) * 2,
               "user.tricky": b'a"b\\c\x00\n=(1) '}
DIR_XATTRS = {"user.empty": b"", "user.octal": b"\\101\x7f\xff"}
CAPABILITY = bytes.fromhex("0100000200200000000000000000000000000000")  # cap_net_raw+ep


def test_ext4_round_trip_carries_extended_attributes(tmp_path: Path) -> None:
    src = tmp_path / "src"
    (src / "dir").mkdir(parents=True)
    (src / "dir/file").write_text("x\n")
    os.link(src / "dir/file", src / "hardlink")
    (src / "plain").write_text("no attributes\n")
    _set_xattrs(src / "dir/file", FILE_XATTRS)
    _set_xattrs(src / "dir", DIR_XATTRS)
    expected = {"dir": DIR_XATTRS, "dir/file": FILE_XATTRS, "hardlink": FILE_XATTRS}
    if os.geteuid() == 0:
        _set_xattrs(src / "plain", {"security.capability": CAPABILITY})
        expected["plain"] = {"security.capability": CAPABILITY}
    image = tmp_path / "fs.img"
    with open(image, "wb") as f:
        f.truncate(40 * MIB)
    ext4fs.make_ext4(image, MIB, 32 * MIB, src, "xattrs", uuid.uuid4())

    out = tmp_path / "out"
    out.mkdir()
    xattrs = ext4fs.extract_tree(image, MIB, out)
    assert _xattrs_by_path(out, xattrs) == expected
    # What a rewrite of the image does: a new filesystem from the copy, then the attributes.
    (out / "new-file").write_text("made on the host\n")
    again = tmp_path / "fs2.img"
    with open(again, "wb") as f:
        f.truncate(40 * MIB)
    ext4fs.make_ext4(again, MIB, 32 * MIB, out, "xattrs", uuid.uuid4())
    ext4xattrs.write_xattrs(again, MIB, out, xattrs)
    out2 = tmp_path / "out2"
    out2.mkdir()
    assert _xattrs_by_path(out2, ext4fs.extract_tree(again, MIB, out2)) == expected


def test_fat_refuses_names_that_differ_only_by_case(tmp_path: Path) -> None:
    tree = tmp_path / "esp"
    (tree / "EFI").mkdir(parents=True)
    (tree / "EFI/a.efi").write_bytes(b"1")
    (tree / "EFI/A.EFI").write_bytes(b"2")
    image = tmp_path / "fat.img"
    with open(image, "wb") as f:
        f.truncate(40 * MIB)
    fatfs.format_fat32(image, 0, 40 * MIB, "ESP", 0x1234ABCD)
    with pytest.raises(BootkitError, match="same file on FAT"):
        fatfs.copy_tree_in(image, 0, tree)
    assert fatfs.read_volume_id(image, 0) == (0x1234ABCD, "ESP")


def test_fat_never_follows_a_symlink_out_of_the_tree(tmp_path: Path) -> None:
    secret = tmp_path / "host/secret"
    secret.parent.mkdir()
    secret.write_text("the host's\n")
    tree = tmp_path / "esp"
    (tree / "EFI/BOOT").mkdir(parents=True)
    (tree / "EFI/BOOT/leak").symlink_to(secret)
    image = tmp_path / "fat.img"
    with open(image, "wb") as f:
        f.truncate(40 * MIB)
    fatfs.format_fat32(image, 0, 40 * MIB, "ESP", 0x1234ABCD)
    with pytest.raises(BootkitError, match="EFI/BOOT/leak: FAT holds only regular files"):
        fatfs.copy_tree_in(image, 0, tree)
    out = tmp_path / "out"
    out.mkdir()
    fatfs.copy_tree_out(image, 0, out)
    assert list(out.iterdir()) == []


def test_ext4_copy_keeps_the_owners_of_symlinks(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("owners need root")
    src = tmp_path / "src"
    src.mkdir()
    (src / "link").symlink_to("/nowhere")
    os.chown(src / "link", 1000, 1001, follow_symlinks=False)
    image = tmp_path / "fs.img"
    with open(image, "wb") as f:
        f.truncate(32 * MIB)
    ext4fs.make_ext4(image, 0, 32 * MIB, src, "links", uuid.uuid4())
    out = tmp_path / "out"
    out.mkdir()
    ext4fs.extract_tree(image, 0, out)
    st = (out / "link").lstat()
    assert (st.st_uid, st.st_gid) == (1000, 1001)


def test_partition_copy_keeps_data_and_holes(tmp_path: Path) -> None:
    src = tmp_path / "disk.img"
    with open(src, "wb") as f:
        f.truncate(16 * MIB)
        for offset in (0, 3 * MIB + 17, 9 * MIB, 16 * MIB - 5):
            f.seek(offset)
            f.write(b"data")
    dest = tmp_path / "part.img"
    _copy_region(src, 2 * MIB, 8 * MIB, dest)
    assert dest.stat().st_size == 8 * MIB
    assert dest.read_bytes() == src.read_bytes()[2 * MIB:10 * MIB]
    assert dest.stat().st_blocks * 512 < MIB  # the holes stayed holes
