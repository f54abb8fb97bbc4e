"""Hostile sources: what an archive declares, or where a source is, never makes a deploy
fill the disk, recurse, or end in a traceback; each is one line that names the culprit."""

from __future__ import annotations

import io
import os
import subprocess
import tarfile
from pathlib import Path

import pytest
from support.helpers import fails, make_tree, ok, snapshot
from support.trees import deployed_sysroot

from bootkit.sysroot.layout import Sysroot


@pytest.fixture
def deployed(tmp_path: Path) -> Path:
    """A sysroot with one deployment, whose state every refused deploy must leave alone."""
    return deployed_sysroot(tmp_path)


def _refused(sysroot: Path, source: Path, *expected: str) -> str:
    before = snapshot(sysroot)
    line = fails("deploy", "--sysroot", sysroot, source)
    for text in expected:
        assert text in line, line
    assert snapshot(sysroot) == before
    ok("status", "--sysroot", sysroot)
    return line


def _more_than_free(path: Path) -> int:
    """A size the filesystem holding `path` has no room for (and can still hold sparse)."""
    st = os.statvfs(path)
    return min(2 * st.f_bavail * st.f_frsize + (1 << 30), 15 << 40)


def test_a_sparse_member_larger_than_the_free_space_is_refused(
    deployed: Path, tmp_path: Path
) -> None:
    tree = make_tree(tmp_path / "src")
    size = _more_than_free(deployed)
    with open(tree / "usr/huge", "wb") as f:
        f.truncate(size)
    archive = tmp_path / "sparse.tar"
    subprocess.run(["tar", "-S", "-C", tree, "-cf", archive, "usr", "var"], check=True)
    assert archive.stat().st_size < 1 << 20
    _refused(deployed, archive, "tar member 'usr/huge' is ", "GiB, but the sysroot has")
    assert list((Sysroot(deployed).objects.root / "tmp").iterdir()) == []


def test_a_directory_source_file_larger_than_the_free_space_is_refused(
    deployed: Path, tmp_path: Path
) -> None:
    tree = make_tree(tmp_path / "src")
    with open(tree / "usr/huge", "wb") as f:
        f.truncate(_more_than_free(deployed))
    _refused(deployed, tree, "usr/huge is ", "GiB, but the sysroot has")


def _member(name: str, data: bytes = b"x", **fields: object) -> tuple[tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mode = 0o644
    for key, value in fields.items():
        setattr(info, key, value)
    return info, data


def _archive(path: Path, evil: tuple[tarfile.TarInfo, bytes], fmt: int) -> Path:
    src = make_tree(path.with_suffix(".d"))
    with tarfile.open(path, "w", format=fmt) as tf:
        for top in ("usr", "var"):
            tf.add(src / top, top)
        tf.addfile(evil[0], io.BytesIO(evil[1]))
    return path


# Values an archive may declare that no filesystem can take.
OVERFLOWS = {
    "huge mtime": (_member("usr/share/a", mtime=2**70), tarfile.GNU_FORMAT, "modification time"),
    "huge negative mtime": (_member("usr/share/a", mtime=-(2**70)), tarfile.GNU_FORMAT,
                            "modification time"),
    "mtime nan": (_member("usr/share/a", pax_headers={"mtime": "nan"}), tarfile.PAX_FORMAT,
                  "modification time"),
    "huge uid": (_member("usr/share/a", uid=2**40), tarfile.GNU_FORMAT, "owner"),
    "negative gid": (_member("usr/share/a", gid=-5), tarfile.GNU_FORMAT, "owner"),
    "uid -1 as unsigned": (_member("usr/share/a", uid=2**32 - 1), tarfile.GNU_FORMAT, "owner"),
    "directory mtime": (_member("usr/share/d", b"", type=tarfile.DIRTYPE, mode=0o755,
                                mtime=2**70), tarfile.GNU_FORMAT, "modification time"),
}


@pytest.mark.parametrize("case", sorted(OVERFLOWS))
def test_metadata_no_filesystem_holds_is_refused_by_member(
    deployed: Path, tmp_path: Path, case: str
) -> None:
    evil, fmt, what = OVERFLOWS[case]
    archive = _archive(tmp_path / "evil.tar", evil, fmt)
    _refused(deployed, archive, f"cannot import tar member {evil[0].name!r}: ", what)


def test_a_name_too_long_for_the_filesystem_names_the_member(
    deployed: Path, tmp_path: Path
) -> None:
    name = "usr/share/" + "n" * 300
    _refused(deployed, _archive(tmp_path / "long.tar", _member(name), tarfile.PAX_FORMAT),
             f"cannot import tar member {name!r}: ", "too long")


def _inside_source(tmp_path: Path) -> tuple[Path, Path]:
    source = make_tree(tmp_path / "source")
    sysroot = source / "sysroot"
    sysroot.mkdir()
    ok("init", "--sysroot", sysroot, "--os", "test", "--bootloader", "grub")
    return source, sysroot


def test_a_source_that_holds_the_sysroot_is_refused(tmp_path: Path) -> None:
    source, sysroot = _inside_source(tmp_path)
    _refused(sysroot, source, f"source {source} contains ", "where bootkit builds")
    # Seen through a symlink, and from below: the deployments' own directory.
    (tmp_path / "alias").symlink_to(source)
    _refused(sysroot, tmp_path / "alias", "contains")
    _refused(sysroot, sysroot / "bootkit/deploy", "contains")
