"""Tar headers that declare more than any tree needs: a pax header or GNU long name of
many megabytes (which Python's tarfile would read into memory whole), an endless
chain of headers, global headers that pile up. Each is refused by name, early."""

from __future__ import annotations

import gzip
import tarfile
from collections.abc import Callable
from pathlib import Path

import pytest
from support.trees import import_tree

from bootkit.errors import BootkitError
from bootkit.sysroot.store import ObjectStore

_BIG = 64 << 20


def _header(name: str, kind: bytes, size: int) -> bytes:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.size = size
    return info.tobuf(format=tarfile.USTAR_FORMAT)


def _padded(data: bytes) -> bytes:
    return data + b"\0" * (-len(data) % tarfile.BLOCKSIZE)


def _write(out: Path, *parts: bytes, zeros: int = 0) -> Path:
    """A gzip archive of `parts`, then `zeros` bytes of '0' (cheap to store, costly to read)."""
    with gzip.open(out, "wb", compresslevel=1) as f:
        for part in parts:
            f.write(part)
        chunk = b"0" * (1 << 20)
        for _ in range(zeros >> 20):
            f.write(chunk)
        f.write(b"\0" * (tarfile.BLOCKSIZE * 2))
    return out


def _pax_bomb(out: Path) -> Path:
    return _write(out, _header("././@PaxHeader", tarfile.XHDTYPE, _BIG), zeros=_BIG)


def _long_name_bomb(out: Path) -> Path:
    return _write(out, _header("././@LongLink", tarfile.GNUTYPE_LONGNAME, _BIG), zeros=_BIG)


def _pax_record(keyword: bytes, value: bytes) -> bytes:
    """One pax record, `<length> <keyword>=<value>\\n`, its length counting its own digits."""
    body = b" " + keyword + b"=" + value + b"\n"
    digits = len(str(len(body)))
    while len(str(len(body) + digits)) != digits:
        digits += 1
    return str(len(body) + digits).encode() + body


def _pax(kind: bytes, record: bytes) -> bytes:
    return _header("././@PaxHeader", kind, len(record)) + _padded(record)


def _endless_chain(out: Path) -> Path:
    return _write(out, _pax(tarfile.XHDTYPE, _pax_record(b"comment", b"x")) * 5000)


def _piled_up_globals(out: Path) -> Path:
    """Global headers, each well under the limit, that add up to more than it."""
    parts = []
    for i in range(8):
        parts.append(_pax(tarfile.XGLTYPE, _pax_record(b"comment%d" % i, b"v" * (200 << 10))))
        parts.append(tarfile.TarInfo(f"f{i}").tobuf(format=tarfile.USTAR_FORMAT))
    return _write(out, *parts)


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (_pax_bomb, "'././@PaxHeader' at byte 0 has headers of more than 1 MiB"),
        (_long_name_bomb, "'././@LongLink' at byte 0 has headers of more than 1 MiB"),
        (_endless_chain, "has more than 16 chained headers"),
        (_piled_up_globals, "global headers to more than 1 MiB"),
    ],
    ids=["pax", "long-name", "chain", "global"],
)
def test_headers_larger_than_any_tree_needs_are_refused(
    tmp_path: Path, make: Callable[[Path], Path], message: str
) -> None:
    archive = make(tmp_path / "bomb.tar.gz")
    with pytest.raises(BootkitError, match=message) as caught:
        import_tree(archive, tmp_path / "dest", ObjectStore(tmp_path / "objects"))
    assert "malicious" in str(caught.value.hint)


def test_long_names_and_pax_headers_of_a_real_tree_still_import(tmp_path: Path) -> None:
    long = "usr/share/" + "/".join(["d" * 200] * 3) + "/file"
    archive = tmp_path / "tree.tar"
    with tarfile.open(archive, "w", format=tarfile.GNU_FORMAT) as tf:
        info = tarfile.TarInfo(long)
        tf.addfile(info)
    with tarfile.open(tmp_path / "pax.tar", "w", format=tarfile.PAX_FORMAT) as tf:
        info = tarfile.TarInfo(long)
        info.pax_headers = {"comment": "c" * 1000}
        tf.addfile(info)
    for name in ("tree.tar", "pax.tar"):
        import_tree(tmp_path / name, tmp_path / f"dest-{name}", ObjectStore(tmp_path / "objects"))
        assert (tmp_path / f"dest-{name}" / long).is_file()
