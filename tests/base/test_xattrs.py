"""Extended attributes: one reader and one writer, each with one error policy."""

from __future__ import annotations

import errno
import os
from collections.abc import Callable
from pathlib import Path

import pytest

from bootkit.base.xattrs import read_xattrs, write_xattrs


def _fail(code: int) -> Callable[..., object]:
    def call(*args: object, **kwargs: object) -> object:
        raise OSError(code, os.strerror(code))

    return call


def _user_xattrs_supported(path: Path) -> bool:
    probe = path / "xattr-probe"
    probe.write_bytes(b"")
    try:
        os.setxattr(probe, "user.probe", b"1")
    except OSError as err:
        if err.errno in (errno.ENOTSUP, errno.EPERM):
            return False
        raise
    finally:
        probe.unlink()
    return True


@pytest.fixture
def supported(tmp_path: Path) -> Path:
    if not _user_xattrs_supported(tmp_path):
        pytest.skip("no user xattrs on this filesystem")
    return tmp_path


def test_round_trip_sorted_and_symlinks_not_followed(supported: Path) -> None:
    target = supported / "target"
    target.write_text("x")
    os.setxattr(target, "user.b", b"2")
    os.setxattr(target, "user.a", b"\x00binary\xff")
    assert read_xattrs(target) == (("user.a", b"\x00binary\xff"), ("user.b", b"2"))
    link = supported / "link"
    link.symlink_to("target")
    assert read_xattrs(link) == ()
    write_xattrs(link, (("user.a", b"1"),))  # Linux refuses user.* on symlinks: left out
    assert read_xattrs(target)[0] == ("user.a", b"\x00binary\xff")
    copy = supported / "copy"
    copy.write_text("y")
    write_xattrs(copy, read_xattrs(target))
    assert read_xattrs(copy) == read_xattrs(target)


def test_reader_filesystem_without_xattrs_gives_none(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(os, "listxattr", _fail(errno.EOPNOTSUPP))
    assert read_xattrs(tmp_path) == ()


@pytest.mark.parametrize("code", [errno.EACCES, errno.EPERM, errno.EIO, errno.ENOENT])
def test_reader_other_listing_errors_propagate(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, code: int
) -> None:
    monkeypatch.setattr(os, "listxattr", _fail(code))
    with pytest.raises(OSError) as caught:
        read_xattrs(tmp_path)
    assert caught.value.errno == code


def test_reader_skips_an_attribute_gone_since_listed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(os, "listxattr", lambda path, follow_symlinks: ["user.b", "user.a"])

    def getxattr(path: object, name: str, follow_symlinks: bool) -> bytes:
        if name == "user.a":
            raise OSError(errno.ENODATA, "No data available")
        return b"kept"

    monkeypatch.setattr(os, "getxattr", getxattr)
    assert read_xattrs(tmp_path) == (("user.b", b"kept"),)


@pytest.mark.parametrize("code", [errno.EACCES, errno.EIO, errno.E2BIG])
def test_reader_other_reading_errors_propagate(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, code: int
) -> None:
    monkeypatch.setattr(os, "listxattr", lambda path, follow_symlinks: ["user.a"])
    monkeypatch.setattr(os, "getxattr", _fail(code))
    with pytest.raises(OSError) as caught:
        read_xattrs(tmp_path)
    assert caught.value.errno == code


def _recording_setxattr(refuse: dict[str, int], done: list[str]) -> Callable[..., None]:
    def setxattr(path: object, name: str, value: bytes, follow_symlinks: bool) -> None:
        assert follow_symlinks is False
        if name in refuse:
            raise OSError(refuse[name], os.strerror(refuse[name]))
        done.append(name)

    return setxattr


def test_writer_skips_unsupported_namespaces_and_goes_on(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    done: list[str] = []
    refuse = {"security.selinux": errno.EOPNOTSUPP}
    monkeypatch.setattr(os, "setxattr", _recording_setxattr(refuse, done))
    write_xattrs(tmp_path, (("security.selinux", b"label"), ("user.a", b"1")))
    assert done == ["user.a"]


def test_writer_skips_user_attributes_on_symlinks_only(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    link = tmp_path / "link"
    link.symlink_to("nowhere")
    (tmp_path / "file").write_text("x")
    done: list[str] = []
    refuse = {"user.a": errno.EPERM, "trusted.b": errno.EPERM}
    monkeypatch.setattr(os, "setxattr", _recording_setxattr(refuse, done))
    write_xattrs(link, (("user.a", b"1"), ("user.c", b"3")))
    assert done == ["user.c"]
    # EPERM for another namespace, or on anything but a symlink, is an error.
    with pytest.raises(PermissionError):
        write_xattrs(link, (("trusted.b", b"2"),))
    with pytest.raises(PermissionError):
        write_xattrs(tmp_path / "file", (("user.a", b"1"),))


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EIO, errno.EACCES])
def test_writer_other_errors_propagate(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, code: int
) -> None:
    monkeypatch.setattr(os, "setxattr", _recording_setxattr({"user.a": code}, []))
    with pytest.raises(OSError) as caught:
        write_xattrs(tmp_path, (("user.a", b"1"),))
    assert caught.value.errno == code
