"""Copying out an ext4 filesystem that whoever ran the image may have crafted.

Each filesystem here holds what no kernel makes (planted with `debugfs -w` or by
rewriting a name in a directory block): the copy must be refused before anything
is written, and nothing outside the copy may change.
"""

from __future__ import annotations

import os
import shutil
import signal
import struct
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from bootkit.diskimage import ext4fs, ext4tree, staged
from bootkit.errors import BootkitError

MIB = 1 << 20
BLOCK = 4096
pytestmark = pytest.mark.skipif(
    any(shutil.which(t) is None and not Path("/usr/sbin", t).exists() for t in ("mke2fs", "debugfs")),
    reason="needs e2fsprogs",
)


def make_fs(path: Path, tree: Path) -> Path:
    """An ext4 filesystem of `tree` whose directory blocks hold plain entries (no hash
    index, no checksums), so a name can be rewritten in place."""
    with open(path, "wb") as f:
        f.truncate(32 * MIB)
    subprocess.run(["mke2fs", "-q", "-F", "-t", "ext4", "-b", str(BLOCK),
                    "-O", "^dir_index,^metadata_csum,^inline_data", "-d", str(tree), str(path)],
                   check=True)
    return path


def debugfs_w(fs: Path, *commands: str) -> None:
    proc = subprocess.run(["debugfs", "-w", "-f", "-", str(fs)], input="\n".join(commands) + "\n",
                          capture_output=True, text=True, check=True)
    assert not [line for line in proc.stderr.splitlines() if not line.startswith("debugfs ")], proc.stderr


def rename_entry(fs: Path, directory: str, old: bytes, new: bytes) -> None:
    """Rewrite the name `old` in `directory`'s first block as `new`, which no tool would write."""
    out = subprocess.run(["debugfs", "-R", f"blocks {directory}", str(fs)],
                         capture_output=True, text=True, check=True).stdout
    block = int(out.split()[0])
    with open(fs, "r+b") as f:
        f.seek(block * BLOCK)
        data = bytearray(f.read(BLOCK))
        at = 0
        while at < BLOCK:
            _inode, rec_len, name_len, _kind = struct.unpack_from("<IHBB", data, at)
            if bytes(data[at + 8:at + 8 + name_len]) == old:
                assert 8 + len(new) <= rec_len
                data[at + 6] = len(new)
                data[at + 8:at + 8 + len(new)] = new
                break
            at += rec_len
        else:
            raise AssertionError(f"no {old!r} in {directory}")
        f.seek(block * BLOCK)
        f.write(data)


@pytest.fixture
def bounded() -> Iterator[None]:
    """A listing that never ends fails the test instead of hanging it."""
    def give_up(signum: int, frame: object) -> None:
        raise TimeoutError("the filesystem was listed for a minute")
    previous = signal.signal(signal.SIGALRM, give_up)
    signal.alarm(60)
    yield
    signal.alarm(0)
    signal.signal(signal.SIGALRM, previous)


def extract(fs: Path, dest: Path) -> None:
    dest.mkdir(parents=True)
    ext4fs.extract_tree(fs, 0, dest)


@pytest.mark.parametrize("name", [b"../../canary/e", b"x/3/\n/99/100644/0/0/y"])
def test_a_name_holding_a_slash_is_refused_before_anything_is_written(tmp_path: Path, name: bytes) -> None:
    (tmp_path / "tree/y").mkdir(parents=True)
    (tmp_path / "tree/y" / ("g" * 40)).write_text("from the image\n")
    (tmp_path / "canary").mkdir()
    fs = make_fs(tmp_path / "fs.img", tmp_path / "tree")
    rename_entry(fs, "/y", b"g" * 40, name)
    with pytest.raises(BootkitError, match=r"holds a name .* in /y"):
        extract(fs, tmp_path / "out")
    assert list((tmp_path / "canary").iterdir()) == []
    assert list((tmp_path / "out").iterdir()) == []


def test_a_name_twice_is_refused_before_a_symlink_is_written_through(tmp_path: Path) -> None:
    (tmp_path / "tree").mkdir()
    (tmp_path / "canary").mkdir()
    (tmp_path / "content").write_text("from the image\n")
    fs = make_fs(tmp_path / "fs.img", tmp_path / "tree")
    debugfs_w(fs, "mkdir y", f"symlink y/d {tmp_path}/canary/f", f"write {tmp_path}/content y/e")
    rename_entry(fs, "/y", b"e", b"d")
    with pytest.raises(BootkitError, match="holds the name /y/d twice"):
        extract(fs, tmp_path / "out")
    assert list((tmp_path / "canary").iterdir()) == []


def test_links_and_special_files_are_never_made_through_a_symlink(tmp_path: Path) -> None:
    # rdump makes the symlink d, then cannot make the directory d; restoring the hard
    # link f = g and making the fifo p would then go through the symlink.
    (tmp_path / "tree").mkdir()
    canary = tmp_path / "canary"
    canary.mkdir()
    (canary / "f").write_text("host f\n")
    (canary / "g").write_text("host g\n")
    (tmp_path / "content").write_text("from the image\n")
    fs = make_fs(tmp_path / "fs.img", tmp_path / "tree")
    debugfs_w(fs, "mkdir y", f"symlink y/d {canary}", "mkdir y/e",
              f"write {tmp_path}/content y/e/f", "ln y/e/f y/e/g", "cd y/e", "mknod p p")
    rename_entry(fs, "/y", b"e", b"d")
    with pytest.raises(BootkitError, match="holds the name /y/d twice"):
        extract(fs, tmp_path / "out")
    assert sorted(p.name for p in canary.iterdir()) == ["f", "g"]
    assert (canary / "g").read_text() == "host g\n"
    assert (canary / "f").stat().st_ino != (canary / "g").stat().st_ino


@pytest.mark.parametrize("name", [b".", b".."])
def test_dot_names_past_the_first_two_entries_are_refused(tmp_path: Path, name: bytes) -> None:
    (tmp_path / "tree/y").mkdir(parents=True)
    (tmp_path / "tree/y/aa").write_text("x\n")
    fs = make_fs(tmp_path / "fs.img", tmp_path / "tree")
    rename_entry(fs, "/y", b"aa", name)
    with pytest.raises(BootkitError, match=r"holds a name '\.\.?' in /y"):
        extract(fs, tmp_path / "out")


@pytest.mark.usefixtures("bounded")
def test_a_directory_linked_into_itself_is_refused(tmp_path: Path) -> None:
    (tmp_path / "tree/A").mkdir(parents=True)
    (tmp_path / "tree/A/f").write_text("hi\n")
    fs = make_fs(tmp_path / "fs.img", tmp_path / "tree")
    debugfs_w(fs, "ln /A /A/loop")
    with pytest.raises(BootkitError, match="holds the directory /A a second time, as /A/loop"):
        extract(fs, tmp_path / "out")


@pytest.mark.usefixtures("bounded")
def test_a_directory_linked_twice_is_refused(tmp_path: Path) -> None:
    (tmp_path / "tree/A").mkdir(parents=True)
    (tmp_path / "tree/B").mkdir()
    fs = make_fs(tmp_path / "fs.img", tmp_path / "tree")
    debugfs_w(fs, "ln /A /B/again")
    with pytest.raises(BootkitError, match="holds the directory /A a second time, as /B/again"):
        extract(fs, tmp_path / "out")


@pytest.mark.parametrize("line", [
    "garbage",
    "     12  100644 (1)      0      0       2  1-Dec-2026 22:25 a\\b",
    "     12  100644 (1)      0      0       2 yesterday a",
])
def test_a_listing_line_that_does_not_parse_is_refused(line: str) -> None:
    listing = f"     12   40755 (2)      0      0    4096  1-Dec-2026 22:25 .\n{line}\n\n"
    with pytest.raises(BootkitError, match="in /y"):
        ext4tree._entries(listing, "y")


def test_names_with_odd_bytes_are_copied_as_they_are(tmp_path: Path) -> None:
    names = ["back\\x2dslash", "sp ace ", "new\nline", os.fsdecode(b"\xe9t\xe9"), "<encrypted (3)>"]
    (tmp_path / "tree/d").mkdir(parents=True)
    for name in names:
        (tmp_path / "tree/d" / name).write_bytes(os.fsencode(name))
    fs = make_fs(tmp_path / "fs.img", tmp_path / "tree")
    extract(fs, tmp_path / "out")
    assert sorted(os.listdir(tmp_path / "out/d")) == sorted(names)
    for name in names:
        assert (tmp_path / "out/d" / name).read_bytes() == os.fsencode(name)


def test_the_staged_copy_is_changed_only_through_real_directories(tmp_path: Path) -> None:
    (tmp_path / "top/a").mkdir(parents=True)
    (tmp_path / "outside").mkdir()
    (tmp_path / "top/link").symlink_to(tmp_path / "outside")
    with staged.opened(tmp_path / "top") as top:
        assert staged.lstat(top, "link").st_ino == (tmp_path / "top/link").lstat().st_ino
        with staged.parent(top, "a/x") as (_fd, name):
            assert name == "x"
        with pytest.raises(BootkitError, match="/link in the staged copy"), staged.parent(top, "link/x"):
            pass
        with pytest.raises(BootkitError, match="/link in the staged copy"):
            staged.lstat(top, "link/x")
