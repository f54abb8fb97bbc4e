"""Importing root trees: what survives, what is stored once, and what is refused."""

from __future__ import annotations

import errno
import gzip
import hashlib
import io
import lzma
import os
import shutil
import socket
import stat
import subprocess
import tarfile
import time
from pathlib import Path

import pytest
from support.helpers import cli, fails, init_sysroot, make_tree, ok, snapshot, untidy

from bootkit.errors import BootkitError
from bootkit.sysroot.importers import ImportReport, open_source
from bootkit.sysroot.store import ObjectStore

IS_ROOT = os.geteuid() == 0


def _describe(root: Path) -> dict[str, tuple[object, ...]]:
    """Every path's type, permission bits, owner, user xattrs, mtime and content or target."""
    out: dict[str, tuple[object, ...]] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in [".", *dirnames, *filenames] if dirpath == str(root) else dirnames + filenames:
            path = Path(dirpath, name)
            st = path.lstat()
            try:
                names = os.listxattr(path, follow_symlinks=False)
            except OSError:
                names = []
            xattrs = tuple(
                sorted(
                    (n, os.getxattr(path, n, follow_symlinks=False))
                    for n in names
                    if n.startswith("user.")
                )
            )
            if stat.S_ISLNK(st.st_mode):
                what: object = os.readlink(path)
            elif stat.S_ISREG(st.st_mode):
                what = hashlib.sha256(path.read_bytes()).hexdigest()
            else:
                what = None
            rel = os.path.normpath(path.relative_to(root))
            # Files under usr/ with equal content and metadata share one inode, and so
            # the mtime of whichever came first: mtime is not part of what is shared.
            shared = stat.S_ISREG(st.st_mode) and rel.startswith("usr/")
            out[rel] = (
                stat.S_IFMT(st.st_mode),
                stat.S_IMODE(st.st_mode),
                st.st_uid,
                st.st_gid,
                xattrs,
                None if shared else int(st.st_mtime),
                what,
            )
    return out


def _xattrs_supported(path: Path) -> bool:
    probe = path / ".xattr-probe"
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


def _rich_tree(root: Path) -> Path:
    """A tree with everything the importer must carry over faithfully."""
    # Files over 1 MiB take another path through a tar import than smaller ones.
    make_tree(root, files={"usr/share/big": os.urandom(256 << 10), "etc/motd": "hi\n",
                           "usr/share/huge": os.urandom(3 << 19), "etc/huge": os.urandom(3 << 19)})
    (root / "usr/bin/su").write_bytes(b"\x7fELF setuid")
    (root / "usr/bin/su").chmod(0o4755)
    (root / "usr/bin/wall").write_bytes(b"\x7fELF setgid")
    (root / "usr/bin/wall").chmod(0o2711)
    (root / "usr/share/secret").write_text("s3cret\n")
    (root / "usr/share/secret").chmod(0o600)
    (root / "usr/share/empty").write_bytes(b"")
    (root / "usr/share/same-as-big").write_bytes((root / "usr/share/big").read_bytes())
    os.link(root / "usr/bin/hello", root / "usr/bin/hello-again")
    ro = root / "usr/lib/ro"
    ro.mkdir()
    (ro / "inside").write_text("x\n")
    ro.chmod(0o555)
    (root / "usr/tmp").mkdir()
    (root / "usr/tmp").chmod(0o1777)
    (root / "usr/lib/secret-link").symlink_to("../share/secret")
    (root / "usr/bin/abs-link").symlink_to("/usr/bin/su")
    (root / "usr/lib/dangling").symlink_to("nowhere")
    if IS_ROOT:
        os.chown(root / "usr/share/secret", 1234, 5678)
        os.chown(root / "usr/bin/wall", 0, 5)
        os.chown(root / "usr/bin/wall", 0, 5)
        (root / "usr/bin/wall").chmod(0o2711)  # chown cleared it
        os.chown(root / "usr/lib/secret-link", 42, 43, follow_symlinks=False)
        os.chown(ro, 7, 8)
    if _xattrs_supported(root):
        os.setxattr(root / "usr/bin/hello", "user.comment", b"greeter")
        os.setxattr(root / "usr/lib", "user.dir-note", b"\x00binary\xff")
    os.utime(root / "usr/share/secret", (1_000_000_000, 1_000_000_000))
    return root


def _import(src: Path, dest: Path, store: ObjectStore) -> ImportReport:
    return open_source(src).import_into(dest, store, lambda n: None, frozenset())


def test_directory_import_keeps_everything(tmp_path: Path) -> None:
    src = _rich_tree(tmp_path / "src")
    store = ObjectStore(tmp_path / "objects")
    report = _import(src, tmp_path / "dest", store)
    assert report.skipped == []
    assert _describe(tmp_path / "dest") == _describe(src)
    dest = tmp_path / "dest"
    assert stat.S_IMODE((dest / "usr/bin/su").stat().st_mode) == 0o4755
    assert stat.S_IMODE((dest / "usr/bin/wall").stat().st_mode) == 0o2711
    # Hardlinks inside usr stay one inode; identical content with identical metadata too.
    assert (dest / "usr/bin/hello").stat().st_ino == (dest / "usr/bin/hello-again").stat().st_ino
    assert (dest / "usr/share/big").stat().st_ino == (dest / "usr/share/same-as-big").stat().st_ino
    # Outside usr every file is a private copy.
    assert (dest / "etc/motd").stat().st_nlink == 1
    # A file stored for the first time keeps its own mtime.
    assert (dest / "usr/share/secret").stat().st_mtime == 1_000_000_000


@pytest.mark.skipif(not IS_ROOT, reason="owners other than oneself need root")
def test_owners_survive(tmp_path: Path) -> None:
    src = _rich_tree(tmp_path / "src")
    store = ObjectStore(tmp_path / "objects")
    _import(src, tmp_path / "dest", store)
    dest = tmp_path / "dest"
    assert (dest / "usr/share/secret").stat()[4:6] == (1234, 5678)
    assert (dest / "usr/lib/secret-link").lstat()[4:6] == (42, 43)
    assert (dest / "usr/lib/ro").stat()[4:6] == (7, 8)


def test_same_content_different_metadata_is_not_shared(tmp_path: Path) -> None:
    src = make_tree(tmp_path / "src", files={"usr/a": "same\n", "usr/b": "same\n"})
    (src / "usr/b").chmod(0o600)
    store = ObjectStore(tmp_path / "objects")
    _import(src, tmp_path / "dest", store)
    dest = tmp_path / "dest"
    assert (dest / "usr/a").stat().st_ino != (dest / "usr/b").stat().st_ino
    assert stat.S_IMODE((dest / "usr/b").stat().st_mode) == 0o600


def test_second_deploy_of_the_same_tree_costs_almost_no_disk(tmp_path: Path) -> None:
    tree = make_tree(
        tmp_path / "tree", files={f"usr/share/f{i}": os.urandom(64 << 10) for i in range(16)}
    )
    sr = init_sysroot(tmp_path / "sys")
    first = sr.deploy(tree)
    second = sr.deploy(tree)
    d1, d2 = sr.deployment_dir("test", first.id), sr.deployment_dir("test", second.id)

    def inodes(root: Path) -> dict[int, os.stat_result]:
        found = {}
        for dirpath, _dirs, files in os.walk(root):
            for name in files:
                st = os.lstat(os.path.join(dirpath, name))
                if stat.S_ISREG(st.st_mode):
                    found[st.st_ino] = st
        return found

    old, new = inodes(d1), inodes(d2)
    fresh = [st for ino, st in new.items() if ino not in old]
    tree_bytes = sum(st.st_size for st in new.values())
    fresh_bytes = sum(st.st_blocks * 512 for st in fresh)
    assert tree_bytes > 1 << 20
    # Only /etc (copied so that it may be written) is new: a few small files.
    assert fresh_bytes < 64 << 10, [st.st_size for st in fresh]
    for rel in ("usr/share/f0", "usr/bin/hello", "usr/lib/os-release"):
        assert (d1 / rel).stat().st_ino == (d2 / rel).stat().st_ino
        assert (d2 / rel).stat().st_nlink == 3  # object store + two deployments
    assert (d1 / "etc/hostname").stat().st_ino != (d2 / "etc/hostname").stat().st_ino
    # Undeploying the first leaves the shared files alone.
    sr.undeploy(first.id)
    assert (d2 / "usr/share/f0").stat().st_nlink == 2
    assert not untidy(sr)


def _special_files(root: Path) -> list[str]:
    """Make a fifo, a socket and (as root) a device node; return their names as reported."""
    os.mkfifo(root / "usr/pipe")
    made = ["/usr/pipe (fifo)"]
    sock = socket.socket(socket.AF_UNIX)
    cwd = os.getcwd()
    os.chdir(root / "usr")  # a short path for bind()
    try:
        sock.bind("sock")
    finally:
        os.chdir(cwd)
        sock.close()
    made.append("/usr/sock (socket)")
    if IS_ROOT:
        try:
            os.mknod(root / "usr/null", stat.S_IFCHR | 0o666, os.makedev(1, 3))
            made.append("/usr/null (device node)")
        except PermissionError:
            pass
    return made


def test_special_files_are_skipped_with_a_warning(tmp_path: Path) -> None:
    tree = make_tree(tmp_path / "tree")
    made = _special_files(tree)
    sysroot = tmp_path / "sys"
    sysroot.mkdir()
    ok("init", "--sysroot", sysroot, "--os", "test", "--bootloader", "systemd-boot")
    result = ok("deploy", "--sysroot", sysroot, tree)
    warning = [line for line in result.stderr.splitlines() if "warning" in line]
    assert len(warning) == 1 and warning[0].startswith("bootkit: warning: skipped")
    for name in made:
        assert name in warning[0]
    (dep,) = (sysroot / "bootkit/deploy/test/deploy").glob("*-*[!n]")
    assert not (dep / "usr/pipe").exists() and not (dep / "usr/sock").exists()
    assert (dep / "usr/bin/hello").is_file()


# --- tar archives -----------------------------------------------------------------------


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
    src = _rich_tree(tmp_path / "src")
    os.mkfifo(src / "usr/pipe")
    archive = _compress(_gnu_tar(src, tmp_path / "tree.tar"), kind)
    store = ObjectStore(tmp_path / "objects")
    report = _import(archive, tmp_path / "from-tar", store)
    assert report.skipped == ["/usr/pipe (fifo)"]
    usr_times = (src / "usr").stat()
    (src / "usr/pipe").unlink()
    os.utime(src / "usr", ns=(usr_times.st_atime_ns, usr_times.st_mtime_ns))
    _import(src, tmp_path / "from-dir", store)
    assert _describe(tmp_path / "from-tar") == _describe(tmp_path / "from-dir")
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


@pytest.fixture
def deployed(tmp_path: Path) -> Path:
    """A sysroot with one deployment, whose state every refused import must leave alone."""
    sysroot = tmp_path / "sys"
    sysroot.mkdir()
    ok("init", "--sysroot", sysroot, "--os", "test", "--bootloader", "grub")
    ok("deploy", "--sysroot", sysroot, make_tree(tmp_path / "tree"))
    return sysroot


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


def test_source_without_kernel(deployed: Path, tmp_path: Path) -> None:
    tree = make_tree(tmp_path / "nokernel")
    shutil.rmtree(tree / "usr/lib/modules")
    before = snapshot(deployed)
    assert "has no kernel" in fails("deploy", "--sysroot", deployed, tree)
    assert snapshot(deployed) == before


def test_import_into_existing_dest_is_refused(tmp_path: Path) -> None:
    src = make_tree(tmp_path / "src")
    (tmp_path / "dest").mkdir()
    with pytest.raises(FileExistsError):
        _import(src, tmp_path / "dest", ObjectStore(tmp_path / "objects"))
    with pytest.raises(BootkitError, match="does not exist"):
        _import(tmp_path / "missing", tmp_path / "dest2", ObjectStore(tmp_path / "o"))


def test_deploy_output_names_the_deployment(tmp_path: Path) -> None:
    sysroot = tmp_path / "sys"
    sysroot.mkdir()
    ok("init", "--sysroot", sysroot, "--os", "test", "--bootloader", "none")
    result = cli("deploy", "--sysroot", sysroot, make_tree(tmp_path / "t"))
    assert result.exit_code == 0 and result.stdout.startswith("Deployed test/1-")


def test_redeploy_reads_only_changed_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The hash cache: unchanged files are not read again, and every change is seen."""
    from bootkit.sysroot.hashcache import HashCache
    from bootkit.sysroot.importers import directory

    # Cache everything, however recent; the sleeps below step past the clock's granularity.
    monkeypatch.setattr(HashCache, "RACY_NS", 0)
    tree = make_tree(tmp_path / "tree", files={f"usr/share/f{i}": f"file {i}\n" for i in range(20)})
    sr = init_sysroot(tmp_path / "sys")
    sr.deploy(tree)
    hashed: list[str] = []
    real_hash = directory._hash_file

    def counting_hash(path: str) -> str:
        hashed.append(path)
        return real_hash(path)

    monkeypatch.setattr(directory, "_hash_file", counting_hash)
    time.sleep(0.05)
    # Same size, same mtime, new content: only the ctime tells.
    target = tree / "usr/share/f3"
    st = target.stat()
    target.write_text("FILE 3\n")
    os.utime(target, ns=(st.st_atime_ns, st.st_mtime_ns))
    (tree / "usr/share/new").write_text("new\n")
    second = sr.deploy(tree)
    assert sorted(Path(p).name for p in hashed) == ["f3", "new"]
    dest = sr.deployment_dir("test", second.id)
    assert (dest / "usr/share/f3").read_text() == "FILE 3\n"
    assert (dest / "usr/share/f4").stat().st_nlink == 3

    # A different source starts from nothing; a damaged cache is ignored.
    hashed.clear()
    other = make_tree(tmp_path / "other", version="2")
    sr.deploy(other)
    # Every file but /var's: the shared /var is filled already, so the tree's is not read.
    files = [p for p in other.rglob("*") if p.is_file() and not p.is_symlink()]
    assert sorted(hashed) == sorted(str(p) for p in files if p.parts[len(other.parts)] != "var")
    (sr.meta / "import-cache.json").write_text("{garbage")
    hashed.clear()
    time.sleep(0.05)
    third = sr.deploy(tree)
    assert "f3" in {Path(p).name for p in hashed}
    assert (sr.deployment_dir("test", third.id) / "usr/share/f3").read_text() == "FILE 3\n"
    assert not untidy(sr)


def test_parallel_import_matches_sequential(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Big trees are imported by several threads; the result must not depend on it."""
    from bootkit.sysroot.importers import directory

    files: dict[str, bytes | str] = {}
    for i in range(120):
        files[f"usr/share/empty/{i}"] = b""  # same content: races for one object
        files[f"usr/share/same/{i}"] = "same\n"
        files[f"usr/share/own/{i}"] = f"own {i}\n"
    files.update({f"etc/conf.d/{i}": "setting\n" for i in range(20)})
    src = make_tree(tmp_path / "src", files=files)
    reports = {}
    for mode, threshold in (("sequential", 1 << 30), ("parallel", 0)):
        monkeypatch.setattr(directory, "PARALLEL_FILES", threshold)
        dest = tmp_path / mode
        reports[mode] = _import(src, dest, ObjectStore(tmp_path / f"objects-{mode}"))
        assert _describe(dest) == _describe(src)
        assert len({(dest / f"usr/share/same/{i}").stat().st_ino for i in range(120)}) == 1
        assert len({(dest / f"usr/share/empty/{i}").stat().st_ino for i in range(120)}) == 1
        assert (dest / "etc/conf.d/0").stat().st_nlink == 1
        assert not [p for p in dest.rglob("*") if p.name.endswith(".bootkit-tmp")]
    assert reports["parallel"].digest == reports["sequential"].digest
    assert reports["parallel"].files == reports["sequential"].files == len(files) + 6
    assert reports["parallel"].linked == reports["sequential"].linked
