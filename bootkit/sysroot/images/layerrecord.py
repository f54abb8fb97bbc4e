"""What one imported layer holds, kept so that the layer's blob is never read again.

A record lists a layer's entries with their metadata and, for files, the content
hash that names their object in the layer's directory. It is written by bootkit,
but lives on a disk anyone with root may edit and is read as root, so `load` checks
it as strictly as a layer: a record that fails is as good as missing.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from bootkit.base.files import atomic_write
from bootkit.base.filetypes import FileType
from bootkit.base.seen import READ_FLAGS, read_all
from bootkit.base.xattrs import Xattrs
from bootkit.errors import BootkitError
from bootkit.sysroot.importers.tarmembers import escapes
from bootkit.sysroot.store import MAX_ID, FileMeta

# A record is read whole: bounded, like everything read into memory. The largest OS
# layers hold a few hundred thousand entries of some 150 bytes each.
MAX_RECORD = 256 << 20
MAX_ENTRIES = 1 << 20
MAX_PATH = 4096
MAX_XATTR_VALUE = 64 << 10
_FORMAT = 1
_SHA256 = re.compile(r"[0-9a-f]{64}")
# The kinds of entry: directory, regular file, symlink, hardlink, skipped special file.
KINDS = frozenset("dflhs")
# What a skipped entry was: a FileType's value, or "" for a type tar itself does not know.
SPECIAL_KINDS = frozenset({"", *(t.value for t in FileType if t.special)})
_FORMAT_BITS = {"d": FileType.DIR.format_bits, "l": FileType.SYMLINK.format_bits}


def diff_id_hex(diff_id: str) -> str:
    """The hex part of a layer's diff id, which names its directory; only sha256 is taken."""
    if not _is_digest(diff_id):
        raise BootkitError(f"layer diff id {diff_id[:80]!r} is not a sha256 digest",
                           hint="the image's configuration may be corrupt; rebuild the image")
    return diff_id.partition(":")[2]


def _is_digest(text: str) -> bool:
    algorithm, _, hexdigest = text.partition(":")
    return algorithm == "sha256" and bool(_SHA256.fullmatch(hexdigest))


def check_path(path: str, *, root: bool = False) -> str:
    """`path` if it is normalized and relative, with no '..'; "." only if `root`."""
    if path == ".":
        if not root:
            raise ValueError("the root itself is not allowed here")
        return path
    if not path or len(path) > MAX_PATH or "\0" in path:
        raise ValueError(f"path {path[:80]!r} is empty, too long or holds a NUL byte")
    if any(part in ("", ".", "..") for part in path.split("/")):
        raise ValueError(f"path {path[:80]!r} is not normalized")
    return path


def _check_int(value: int, low: int, high: int, what: str) -> None:
    if type(value) is not int or not low <= value <= high:
        raise ValueError(f"{what} {value!r} is out of range")


@dataclass(frozen=True)
class LayerEntry:
    path: str  # normalized, relative, no '..'
    kind: str  # one of KINDS
    mode: int  # permission bits only
    uid: int
    gid: int
    mtime: float
    xattrs: Xattrs
    sha256: str = ""  # files
    size: int = 0  # files
    target: str = ""  # symlink target, hardlink target path, or a skipped entry's FileType

    def __post_init__(self) -> None:
        # The same checks for an entry a layer makes and one a record brings back.
        if self.kind not in KINDS:
            raise ValueError(f"entry kind {self.kind!r} is unknown")
        check_path(self.path, root=self.kind == "d")
        _check_int(self.mode, 0, 0o7777, "mode")
        _check_int(self.uid, 0, MAX_ID, "user id")
        _check_int(self.gid, 0, MAX_ID, "group id")
        self.meta()  # refuses an mtime no filesystem can take
        _check_xattrs(self.xattrs)
        is_file = self.kind == "f"
        if is_file != bool(_SHA256.fullmatch(self.sha256)) or (self.sha256 and not is_file):
            raise ValueError(f"content hash {self.sha256[:80]!r} does not fit a {self.kind!r}")
        _check_int(self.size, 0, (1 << 63) - 1 if is_file else 0, "size")
        _check_target(self)

    def meta(self) -> FileMeta:
        """The metadata of the file this entry makes, with the format bits notes carry."""
        bits = _FORMAT_BITS.get(self.kind, FileType.FILE.format_bits)
        return FileMeta(bits | self.mode, self.uid, self.gid, self.xattrs, self.mtime)


def _check_xattrs(xattrs: Xattrs) -> None:
    names = [name for name, _ in xattrs]
    if names != sorted(set(names)):
        raise ValueError("extended attributes are not sorted and unique")
    for name, value in xattrs:
        if not 0 < len(name) <= 255 or "\0" in name or len(value) > MAX_XATTR_VALUE:
            raise ValueError(f"extended attribute {name[:80]!r} is not valid")


def _check_target(e: LayerEntry) -> None:
    if e.kind == "l":
        if not e.target or len(e.target) > MAX_PATH or "\0" in e.target:
            raise ValueError(f"symlink target {e.target[:80]!r} is not valid")
        if escapes(PurePosixPath(e.path), e.target):
            raise ValueError(f"symlink target {e.target[:80]!r} escapes the tree")
    elif e.kind == "h":
        check_path(e.target)
        if e.target == e.path:
            raise ValueError("a hardlink to itself")
    elif e.kind == "s":
        if e.target not in SPECIAL_KINDS:
            raise ValueError(f"special file type {e.target[:80]!r} is unknown")
    elif e.target:
        raise ValueError(f"a {e.kind!r} entry has a target")


@dataclass(frozen=True)
class LayerRecord:
    diff_id: str
    entries: tuple[LayerEntry, ...]  # in archive order, whiteout markers removed
    whiteouts: tuple[str, ...]  # paths removed from LOWER layers
    opaque: tuple[str, ...]  # dirs whose LOWER children are removed

    def save(self, path: Path) -> None:
        data = json.dumps(
            {"format": _FORMAT, "diff_id": self.diff_id, "whiteouts": list(self.whiteouts),
             "opaque": list(self.opaque), "entries": [_row(e) for e in self.entries]},
            separators=(",", ":"),
        ).encode()
        if len(data) > MAX_RECORD:
            raise BootkitError(
                f"the record of layer {self.diff_id} would be over {MAX_RECORD >> 20} MiB",
                hint="the image may be malicious; no OS layer needs that many entries",
            )
        atomic_write(path, data, 0o600)

    @classmethod
    def load(cls, path: Path) -> LayerRecord:
        """The record at `path`; BootkitError saying what is wrong with it."""
        try:
            fd = os.open(path, READ_FLAGS)
            try:
                data = read_all(fd, MAX_RECORD)
            finally:
                os.close(fd)
            if data is None:
                raise ValueError(f"it is over {MAX_RECORD >> 20} MiB")
            return _from_json(json.loads(data))
        except (OSError, ValueError, TypeError, binascii.Error, RecursionError) as err:
            # JSONDecodeError and UnicodeDecodeError are ValueErrors.
            raise BootkitError(f"layer record {path} cannot be read: {err}",
                               hint="pull the image again to import the layer anew") from None


def _row(e: LayerEntry) -> list[Any]:
    xattrs = [[name, base64.b64encode(value).decode()] for name, value in e.xattrs]
    return [e.path, e.kind, e.mode, e.uid, e.gid, e.mtime, xattrs, e.sha256, e.size, e.target]


def _from_json(doc: Any) -> LayerRecord:
    if not isinstance(doc, dict) or doc.get("format") != _FORMAT:
        raise ValueError("it is not a layer record of this version of bootkit")
    diff_id: Any = doc.get("diff_id")
    rows: Any = doc.get("entries")
    whiteouts: Any = doc.get("whiteouts")
    opaque: Any = doc.get("opaque")
    if not isinstance(diff_id, str) or not all(
        isinstance(x, list) and len(x) <= MAX_ENTRIES for x in (rows, whiteouts, opaque)
    ):
        raise ValueError("its fields are missing or of the wrong type")
    if not _is_digest(diff_id):
        raise ValueError(f"diff id {diff_id[:80]!r} is not a sha256 digest")
    return LayerRecord(
        diff_id,
        tuple(_entry(row) for row in rows),
        tuple(check_path(_str(p)) for p in whiteouts),
        tuple(check_path(_str(p), root=True) for p in opaque),
    )


def _str(value: Any) -> str:
    if not isinstance(value, str):
        raise ValueError(f"{value!r:.80} is not a string")
    return value


def _entry(row: Any) -> LayerEntry:
    if not isinstance(row, list) or len(row) != 10:
        raise ValueError("an entry is not a list of 10 fields")
    path, kind, mode, uid, gid, mtime, xattrs, sha256, size, target = row
    if type(mtime) not in (int, float) or not isinstance(xattrs, list):
        raise ValueError(f"entry {path!r:.80} has a field of the wrong type")
    return LayerEntry(_str(path), _str(kind), mode, uid, gid, float(mtime), _xattrs(xattrs),
                      _str(sha256), size, _str(target))


def _xattrs(pairs: Iterable[Any]) -> Xattrs:
    found = []
    for pair in pairs:
        if not isinstance(pair, list) or len(pair) != 2:
            raise ValueError("an extended attribute is not a name and a value")
        found.append((_str(pair[0]), base64.b64decode(_str(pair[1]), validate=True)))
    return tuple(found)
