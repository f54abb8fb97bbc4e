"""The one map of file types: every kind of object a tree or archive can hold."""

from __future__ import annotations

import os
import socket
import stat
from pathlib import Path

import pytest

from bootkit.base.filetypes import FileType

MODES = {
    FileType.FILE: stat.S_IFREG | 0o644,
    FileType.DIR: stat.S_IFDIR | 0o755,
    FileType.SYMLINK: stat.S_IFLNK | 0o777,
    FileType.CHAR: stat.S_IFCHR | 0o600,
    FileType.BLOCK: stat.S_IFBLK | 0o660,
    FileType.FIFO: stat.S_IFIFO | 0o644,
    FileType.SOCKET: stat.S_IFSOCK | 0o755,
}


@pytest.mark.parametrize("kind", list(FileType))
def test_of_mode_names_every_type(kind: FileType) -> None:
    assert FileType.of_mode(MODES[kind]) is kind
    assert FileType.of_mode(kind.format_bits) is kind
    # Permission bits, setuid and sticky bits included, say nothing about the type.
    assert FileType.of_mode(MODES[kind] | 0o7000) is kind


def test_a_mode_of_no_type_is_refused() -> None:
    with pytest.raises(ValueError, match="no known file type"):
        FileType.of_mode(0o644)
    with pytest.raises(ValueError):
        FileType.of_mode(0o170000)


def test_values_descriptions_and_special_files() -> None:
    assert [str(kind) for kind in FileType] == [
        "file", "dir", "symlink", "char", "block", "fifo", "socket",
    ]
    assert {kind.description for kind in FileType if kind.special} == {
        "device node", "fifo", "socket",
    }
    assert [kind for kind in FileType if not kind.special] == [
        FileType.FILE, FileType.DIR, FileType.SYMLINK,
    ]
    assert f"a {FileType.CHAR.description}" == "a device node"


def test_of_mode_on_real_objects(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    (tmp_path / "dir").mkdir()
    (tmp_path / "link").symlink_to("file")
    os.mkfifo(tmp_path / "fifo")
    sock = socket.socket(socket.AF_UNIX)
    try:
        sock.bind(str(tmp_path / "sock"))
    finally:
        sock.close()
    found = {p.name: FileType.of_mode(p.lstat().st_mode) for p in tmp_path.iterdir()}
    assert found == {"file": "file", "dir": "dir", "link": "symlink", "fifo": "fifo",
                     "sock": "socket"}
    assert FileType.of_mode(os.stat("/dev/null").st_mode) is FileType.CHAR
