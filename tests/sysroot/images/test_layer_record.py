"""A layer's record: written whole and read back, checked as strictly as a layer."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from bootkit.errors import BootkitError
from bootkit.sysroot.images.layerrecord import MAX_RECORD, LayerEntry, LayerRecord

DIFF_ID = "sha256:" + "ab" * 32
RECORD = LayerRecord(
    DIFF_ID,
    (
        LayerEntry(".", "d", 0o755, 0, 0, 1.5, ()),
        LayerEntry("usr/bin/x\udcff", "f", 0o4755, 1, 2, 1e9, (("user.a", b"\x00\xff"),),
                   sha256="0f" * 32, size=12),
        LayerEntry("usr/bin/y", "h", 0o644, 0, 0, 0.0, (), target="usr/bin/x\udcff"),
        LayerEntry("usr/lib/l", "l", 0o777, 0, 0, 0.0, (), target="../bin/y"),
        LayerEntry("usr/dev/d", "s", 0o600, 0, 0, 0.0, (), target="char"),
    ),
    ("usr/old",),
    (".", "etc"),
)


def test_a_record_reads_back_as_it_was_written(tmp_path: Path) -> None:
    RECORD.save(tmp_path / "record")
    assert LayerRecord.load(tmp_path / "record") == RECORD
    assert (tmp_path / "record").stat().st_mode & 0o777 == 0o600


def _edit_entry(index: int, field: int, value: Any) -> Any:
    def edit(doc: Any) -> None:
        doc["entries"][index][field] = value
    return edit


def _set(key: str, value: Any) -> Any:
    def edit(doc: Any) -> None:
        doc[key] = value
    return edit


@pytest.mark.parametrize("edit", [
    _edit_entry(1, 0, "usr/../etc/shadow"),
    _edit_entry(1, 0, "/etc/shadow"),
    _edit_entry(1, 0, "usr//x"),
    _edit_entry(1, 0, "usr/x/"),
    _edit_entry(1, 0, "."),
    _edit_entry(1, 1, "x"),
    _edit_entry(1, 2, 0o17777),
    _edit_entry(1, 2, True),
    _edit_entry(1, 3, -1),
    _edit_entry(1, 4, 1 << 40),
    _edit_entry(1, 5, 1e300),
    _edit_entry(1, 5, "0"),
    _edit_entry(1, 6, [["user.a", "not base64!"]]),
    _edit_entry(1, 6, [["user.b", ""], ["user.a", ""]]),
    _edit_entry(1, 7, "0F" * 32),
    _edit_entry(1, 7, ""),
    _edit_entry(1, 8, -1),
    _edit_entry(2, 9, "../x"),
    _edit_entry(2, 9, "usr/bin/y"),
    _edit_entry(3, 9, "../../../etc"),
    _edit_entry(4, 9, "disk"),
    _edit_entry(0, 7, "0f" * 32),
    _set("format", 2),
    _set("diff_id", "md5:00"),
    _set("whiteouts", ["../x"]),
    _set("opaque", "etc"),
    _set("entries", [["too", "short"]]),
])
def test_a_record_that_is_not_what_bootkit_writes_is_refused(tmp_path: Path, edit: Any) -> None:
    RECORD.save(tmp_path / "record")
    doc = json.loads((tmp_path / "record").read_text())
    edit(doc)
    (tmp_path / "record").write_text(json.dumps(doc))
    with pytest.raises(BootkitError, match="cannot be read"):
        LayerRecord.load(tmp_path / "record")


@pytest.mark.parametrize("content", [b"", b"\xff\xfe", b"[]", b"{" * 100_000])
def test_a_record_that_is_no_json_object_is_refused(tmp_path: Path, content: bytes) -> None:
    (tmp_path / "record").write_bytes(content)
    with pytest.raises(BootkitError, match="cannot be read"):
        LayerRecord.load(tmp_path / "record")


def test_a_record_too_large_is_refused_unread(tmp_path: Path) -> None:
    with open(tmp_path / "record", "wb") as f:
        f.truncate(MAX_RECORD + 1)
    with pytest.raises(BootkitError, match="over 256 MiB"):
        LayerRecord.load(tmp_path / "record")


def test_a_record_is_never_read_through_a_symlink(tmp_path: Path) -> None:
    RECORD.save(tmp_path / "real")
    (tmp_path / "record").symlink_to("real")
    with pytest.raises(BootkitError, match="cannot be read"):
        LayerRecord.load(tmp_path / "record")
