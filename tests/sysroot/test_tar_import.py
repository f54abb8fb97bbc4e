"""Importing tar archives: every compression, and members that are refused."""

from __future__ import annotations

import gzip
import io
import lzma
import os
import shutil
import subprocess
import tarfile
from pathlib import Path

import pytest
from support.helpers import fails, make_tree, ok, snapshot
from support.trees import deployed_sysroot, describe_tree, import_tree, rich_tree

from bootkit.sysroot.store import ObjectStore


@pytest.fixture
def deployed(tmp_path: Path) -> Path:
    """A sysroot with one deployment, whose state every refused import must leave alone."""
    return deployed_sysroot(tmp_path)


def _gnu_tar(src: Path, out: Path) -> Path:
    subprocess.run(
        [
            "tar",
            "-C",
            str(src),
            "--xattrs",
            "--xattrs-include=user.*",
            "--numeric-owner",
            "-cf",
            str(out),
            ".",
        ],
        check=True,
        capture_output=True,
    )
    return out


def _compress(tar: Path, kind: str) -> Path:
    data = tar.read_bytes()
    if kind == "plain":
        return tar
    out = tar.with_name(f"{tar.name}.{kind}")
    if kind == "gz":
        out.write_bytes(gzip.compress(data))
    elif kind == "xz":
        out.write_bytes(lzma.compress(data))
    elif kind == "zst":
        subprocess.run(["zstd", "-q", "-f", str(tar), "-o", str(out)], check=True)
    return out


@pytest.mark.parametrize("kind", ["plain", "gz", "xz", "zst"])
def test_tar_variants_import_like_the_directory(tmp_path: Path, kind: str) -> None:
    if kind == "zst" and shutil.which("zstd") is None:
        pytest.skip("zstd not installed")
    src = rich_tree(tmp_path / "src")
    os.mkfifo(src / "usr/pipe")
    archive = _compress(_gnu_tar(src, tmp_path / "tree.tar"), kind)
    store = ObjectStore(tmp_path / "objects")
    report = import_tree(archive, tmp_path / "from-tar", store)
    assert report.skipped == ["/usr/pipe (fifo)"]
    usr_times = (src / "usr").stat()
    (src / "usr/pipe").unlink()
    os.utime(src / "usr", ns=(usr_times.st_atime_ns, usr_times.st_mtime_ns))
    import_tree(src, tmp_path / "from-dir", store)
    assert describe_tree(tmp_path / "from-tar") == describe_tree(tmp_path / "from-dir")
    dest = tmp_path / "from-tar"
    assert (dest / "usr/bin/hello").stat().st_ino == (dest / "usr/bin/hello-again").stat().st_ino
    # Both imports share the stored files.
    for name in ("usr/share/big", "usr/share/huge"):
        assert (dest / name).stat().st_ino == (tmp_path / "from-dir" / name).stat().st_ino
    assert report.digest


def _tar(path: Path, members: list[tuple[tarfile.TarInfo, bytes | None]]) -> Path:
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as tf:
        for info, data in members:
            if data is not None:
                info.size = len(data)
            tf.addfile(info, io.BytesIO(data) if data is not None else None)
    return path


def _member(name: str, kind: bytes = tarfile.REGTYPE, link: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = link
    info.mode = 0o755 if kind == tarfile.DIRTYPE else 0o644
    return info


def _kernel_members() -> list[tuple[tarfile.TarInfo, bytes | None]]:
    kdir = "usr/lib/modules/6.1.0-9"
    return [
        (_member("usr", tarfile.DIRTYPE), None),
        (_member("usr/lib", tarfile.DIRTYPE), None),
        (_member("usr/lib/modules", tarfile.DIRTYPE), None),
        (_member(kdir, tarfile.DIRTYPE), None),
        (_member(f"{kdir}/vmlinuz"), b"kernel from tar\n"),
        (_member(f"{kdir}/initramfs.img"), b"initrd from tar\n"),
        (_member("usr/share", tarfile.DIRTYPE), None),
        (_member("usr/share/data"), os.urandom(4096)),
    ]


EVIL = {
    "absolute path": ([(_member("/etc/passwd"), b"root::0:0\n")], "absolute path"),
    "dot-dot": ([(_member("usr/../../escape"), b"x")], "contains '..'"),
    "escaping symlink": (
        [(_member("usr/share/evil", tarfile.SYMTYPE, "../../../etc"), None)],
        "escapes the tree",
    ),
    "hardlink to a non-member": (
        [(_member("usr/share/shadow", tarfile.LNKTYPE, "etc/shadow"), None)],
        "not an earlier file",
    ),
    "write through a symlink": (
        [
            (_member("usr/share/lnk", tarfile.SYMTYPE, "/etc"), None),
            (_member("usr/share/lnk/cron.d"), b"* * * * * root evil\n"),
        ],
        "written through usr/share/lnk",
    ),
    "duplicate member": (
        [(_member("usr/share/data"), b"second copy\n")],
        "more than once",
    ),
}


def _assert_refused(sysroot: Path, archive: Path, message: str) -> None:
    before = snapshot(sysroot)
    line = fails("deploy", "--sysroot", sysroot, archive)
    assert message in line, line
    assert snapshot(sysroot) == before
    ok("status", "--sysroot", sysroot)


@pytest.mark.parametrize("case", sorted(EVIL))
def test_malicious_tar_members_are_refused(deployed: Path, tmp_path: Path, case: str) -> None:
    evil, message = EVIL[case]
    # The harmless part first, so that a refusal must also undo work already done.
    archive = _tar(tmp_path / "evil.tar", _kernel_members() + evil)
    _assert_refused(deployed, archive, message)


def test_the_same_members_without_the_evil_one_deploy(deployed: Path, tmp_path: Path) -> None:
    archive = _tar(tmp_path / "good.tar", _kernel_members())
    ok("deploy", "--sysroot", deployed, archive)
    result = ok("status", "--sysroot", deployed, "--json")
    assert '"kernel_version": "6.1.0-9"' in result.stdout


def _truncated(path: Path, data: bytes, keep: float) -> Path:
    path.write_bytes(data[: int(len(data) * keep)])
    return path


@pytest.mark.parametrize("kind", ["plain", "gz", "xz", "zst", "garbage"])
def test_corrupt_or_truncated_tar(deployed: Path, tmp_path: Path, kind: str) -> None:
    src = make_tree(tmp_path / "src", files={"usr/share/big": os.urandom(512 << 10)})
    tar = _gnu_tar(src, tmp_path / "src.tar")
    if kind == "garbage":
        archive = tmp_path / "garbage.tar"
        archive.write_bytes(os.urandom(10_000))
    else:
        if kind == "zst" and shutil.which("zstd") is None:
            pytest.skip("zstd not installed")
        whole = _compress(tar, kind)
        archive = _truncated(tmp_path / f"cut.{kind}", whole.read_bytes(), 0.6)
    before = snapshot(deployed)
    line = fails("deploy", "--sysroot", deployed, archive)
    assert str(archive) in line and ("tar archive" in line or "decompress" in line), line
    assert snapshot(deployed) == before
