"""Importing root trees: what survives, what is stored once, and the hash cache."""

from __future__ import annotations

import os
import shutil
import socket
import stat
import time
from pathlib import Path

import pytest
from support.helpers import cli, deploy_tree, fails, init_sysroot, make_tree, ok, snapshot, untidy
from support.trees import (
    IS_ROOT,
    deployed_sysroot,
    describe_tree,
    import_tree,
    rich_tree,
)

from bootkit.errors import BootkitError
from bootkit.sysroot import cleanup
from bootkit.sysroot.store import ObjectStore


@pytest.fixture
def deployed(tmp_path: Path) -> Path:
    """A sysroot with one deployment, whose state a refused import must leave alone."""
    return deployed_sysroot(tmp_path)


def test_directory_import_keeps_everything(tmp_path: Path) -> None:
    src = rich_tree(tmp_path / "src")
    store = ObjectStore(tmp_path / "objects")
    report = import_tree(src, tmp_path / "dest", store)
    assert report.skipped == []
    assert describe_tree(tmp_path / "dest") == describe_tree(src)
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
    src = rich_tree(tmp_path / "src")
    store = ObjectStore(tmp_path / "objects")
    import_tree(src, tmp_path / "dest", store)
    dest = tmp_path / "dest"
    assert (dest / "usr/share/secret").stat()[4:6] == (1234, 5678)
    assert (dest / "usr/lib/secret-link").lstat()[4:6] == (42, 43)
    assert (dest / "usr/lib/ro").stat()[4:6] == (7, 8)


def test_same_content_different_metadata_is_not_shared(tmp_path: Path) -> None:
    src = make_tree(tmp_path / "src", files={"usr/a": "same\n", "usr/b": "same\n"})
    (src / "usr/b").chmod(0o600)
    store = ObjectStore(tmp_path / "objects")
    import_tree(src, tmp_path / "dest", store)
    dest = tmp_path / "dest"
    assert (dest / "usr/a").stat().st_ino != (dest / "usr/b").stat().st_ino
    assert stat.S_IMODE((dest / "usr/b").stat().st_mode) == 0o600


def test_second_deploy_of_the_same_tree_costs_almost_no_disk(tmp_path: Path) -> None:
    tree = make_tree(
        tmp_path / "tree", files={f"usr/share/f{i}": os.urandom(64 << 10) for i in range(16)}
    )
    sr = init_sysroot(tmp_path / "sys")
    first = deploy_tree(sr, tree)
    second = deploy_tree(sr, tree)
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
    cleanup.undeploy(sr, first.id)
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
        import_tree(src, tmp_path / "dest", ObjectStore(tmp_path / "objects"))
    with pytest.raises(BootkitError, match="does not exist"):
        import_tree(tmp_path / "missing", tmp_path / "dest2", ObjectStore(tmp_path / "o"))


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
    deploy_tree(sr, tree)
    hashed: list[str] = []
    real_hash = directory._read_hash

    def counting_hash(fd: int) -> tuple[str, bytes | None]:
        hashed.append(os.readlink(f"/proc/self/fd/{fd}"))
        return real_hash(fd)

    monkeypatch.setattr(directory, "_read_hash", counting_hash)
    time.sleep(0.05)
    # Same size, same mtime, new content: only the ctime tells.
    target = tree / "usr/share/f3"
    st = target.stat()
    target.write_text("FILE 3\n")
    os.utime(target, ns=(st.st_atime_ns, st.st_mtime_ns))
    (tree / "usr/share/new").write_text("new\n")
    second = deploy_tree(sr, tree)
    assert sorted(Path(p).name for p in hashed) == ["f3", "new"]
    dest = sr.deployment_dir("test", second.id)
    assert (dest / "usr/share/f3").read_text() == "FILE 3\n"
    assert (dest / "usr/share/f4").stat().st_nlink == 3

    # A different source starts from nothing; a damaged cache is ignored.
    hashed.clear()
    other = make_tree(tmp_path / "other", version="2")
    deploy_tree(sr, other)
    # Every file but /var's: the shared /var is filled already, so the tree's is not read.
    files = [p for p in other.rglob("*") if p.is_file() and not p.is_symlink()]
    assert sorted(hashed) == sorted(str(p) for p in files if p.parts[len(other.parts)] != "var")
    (sr.meta / "import-cache.json").write_text("{garbage")
    hashed.clear()
    time.sleep(0.05)
    third = deploy_tree(sr, tree)
    assert "f3" in {Path(p).name for p in hashed}
    assert (sr.deployment_dir("test", third.id) / "usr/share/f3").read_text() == "FILE 3\n"
    assert not untidy(sr)


def test_cached_files_are_linked_unopened(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A file under usr/ whose hash the cache knows is linked to its stored object without
    being opened; its extended attributes still count, and without a stored object it
    is read again."""
    from bootkit.sysroot.hashcache import HashCache
    from bootkit.sysroot.importers import directory

    monkeypatch.setattr(HashCache, "RACY_NS", 0)
    files = {f"usr/share/f{i}": f"file {i}\n" for i in range(5)}
    tree = make_tree(tmp_path / "tree", files=files)
    os.setxattr(tree / "usr/share/f1", "user.kept", b"yes")
    sr = init_sysroot(tmp_path / "sys")
    deploy_tree(sr, tree)
    opened: list[str] = []
    real_open = directory.open_seen

    def recording_open(path: str, seen: os.stat_result, **kw: int | None) -> object:
        if stat.S_ISREG(seen.st_mode):
            opened.append(path)
        return real_open(path, seen, **kw)

    monkeypatch.setattr(directory, "open_seen", recording_open)
    time.sleep(0.05)
    (tree / "usr/share/f0").write_text("changed\n")
    dest = sr.deployment_dir("test", deploy_tree(sr, tree).id)
    assert [Path(p).name for p in opened if "/usr/share/f" in p] == ["f0"]
    assert (dest / "usr/share/f0").read_text() == "changed\n"
    assert os.getxattr(dest / "usr/share/f1", "user.kept") == b"yes"
    assert (dest / "usr/share/f2").stat().st_nlink == 3  # the object and two trees

    # The stored object is gone (a damaged store): the file is read and stored again.
    for obj in Path(sr.objects.root).glob("*/*"):
        if obj.stat().st_ino == (dest / "usr/share/f2").stat().st_ino:
            obj.unlink()
    opened.clear()
    third = sr.deployment_dir("test", deploy_tree(sr, tree).id)
    assert [Path(p).name for p in opened if "/usr/share/f" in p] == ["f2"]
    assert (third / "usr/share/f2").read_text() == "file 2\n"
    assert os.getxattr(third / "usr/share/f1", "user.kept") == b"yes"


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
    # "few in flight": the walk waits for the threads after every two files.
    for mode, threshold, in_flight in (("sequential", 1 << 30, 1), ("parallel", 0, 1000),
                                       ("few in flight", 0, 2)):
        monkeypatch.setattr(directory, "PARALLEL_FILES", threshold)
        monkeypatch.setattr(directory, "IN_FLIGHT", in_flight)
        dest = tmp_path / mode
        reports[mode] = import_tree(src, dest, ObjectStore(tmp_path / f"objects-{mode}"))
        assert describe_tree(dest) == describe_tree(src)
        assert len({(dest / f"usr/share/same/{i}").stat().st_ino for i in range(120)}) == 1
        assert len({(dest / f"usr/share/empty/{i}").stat().st_ino for i in range(120)}) == 1
        assert (dest / "etc/conf.d/0").stat().st_nlink == 1
        assert not [p for p in dest.rglob("*") if p.name.endswith(".bootkit-tmp")]
    assert reports["parallel"].digest == reports["sequential"].digest
    assert reports["few in flight"].notes == reports["sequential"].notes
    assert reports["few in flight"].content_digest == reports["sequential"].content_digest
    assert reports["parallel"].files == reports["sequential"].files == len(files) + 6
    assert reports["parallel"].linked == reports["sequential"].linked
