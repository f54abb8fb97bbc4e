"""A source that its owner changes while bootkit (root) reads it: a file swapped for a
symlink to a host file, rewritten in place between hashing and copying, a directory
swapped for a symlink. Nothing of the host is read, changed or stored, and what is
stored under a content hash has that content."""

from __future__ import annotations

import json
import os
import stat
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from support.helpers import cli, deploy_tree, init_sysroot, make_tree

from bootkit.base.seen import FileChanged
from bootkit.sysroot import etcmerge, etctree
from bootkit.sysroot.etctree import Node
from bootkit.sysroot.hashcache import HashCache
from bootkit.sysroot.importers import directory
from bootkit.sysroot.layout import Sysroot

SECRET = "root:secret\n"


@pytest.fixture
def victim(tmp_path: Path) -> Path:
    """A host file that stands for /etc/shadow."""
    path = tmp_path / "host-secret"
    path.write_text(SECRET)
    path.chmod(0o600)
    return path


def _host_inode_in(sr: Sysroot, victim: Path) -> list[Path]:
    v = victim.stat()
    return [p for p in sr.path.rglob("*") if not p.is_symlink() and p.is_file()
            and (p.stat().st_ino, p.stat().st_dev) == (v.st_ino, v.st_dev)]


def _swap_before_placing(monkeypatch: pytest.MonkeyPatch, swap: Callable[[], None]) -> None:
    """Run `swap` once the walk is done, before any file is read (the attacker's moment)."""
    real = directory._DirectoryImport.place_all

    def place_all(self: directory._DirectoryImport, files: Iterator[directory._File]) -> None:
        walked = list(files)  # the walk goes on as files are placed: let it finish first
        swap()
        real(self, iter(walked))

    monkeypatch.setattr(directory._DirectoryImport, "place_all", place_all)


@pytest.mark.parametrize("big", [False, True], ids=["small", "big"])
def test_a_file_swapped_for_a_symlink_after_the_walk_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, victim: Path, big: bool
) -> None:
    content = b"x" * (3 << 20) if big else b"harmless\n"
    src = make_tree(tmp_path / "src", files={"usr/share/x": content, "etc/x": content})
    for rel in ("usr/share/x", "etc/x"):
        (src / rel).chmod(0o6777)
    sr = init_sysroot(tmp_path / "sys")

    def swap() -> None:
        for rel in ("usr/share/x", "etc/x"):
            os.unlink(src / rel)
            os.symlink(victim, src / rel)

    _swap_before_placing(monkeypatch, swap)
    with pytest.raises(FileChanged, match=r"usr/share/x|etc/x"):
        deploy_tree(sr, src)
    assert stat.S_IMODE(victim.stat().st_mode) == 0o600
    assert victim.read_text() == SECRET and victim.stat().st_nlink == 1
    assert not _host_inode_in(sr, victim)


def test_a_directory_swapped_for_a_symlink_during_the_walk_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, victim: Path
) -> None:
    src = make_tree(tmp_path / "src", files={"usr/share/doc/readme": "hi\n"})
    host_dir = victim.parent / "host-dir"
    host_dir.mkdir()
    (host_dir / "shadow").write_text(SECRET)
    sr = init_sysroot(tmp_path / "sys")
    real = directory._listing

    def listing(path: str, seen: os.stat_result) -> list[directory._Entry]:
        found = real(path, seen)
        if path.endswith("usr/share"):  # listed, so 'doc' is known as a directory: swap it
            os.rename(src / "usr/share/doc", tmp_path / "doc-aside")
            os.symlink(host_dir, src / "usr/share/doc")
        return found

    monkeypatch.setattr(directory, "_listing", listing)
    with pytest.raises(FileChanged, match="usr/share/doc"):
        deploy_tree(sr, src)
    assert not [p for p in sr.path.rglob("shadow")]


def test_a_file_rewritten_between_hashing_and_copying_is_not_stored_under_the_hash(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A file big enough to be hashed and copied in two reads: the copy is hashed too."""
    benign = b"benign sudo\n" * (200 << 10)
    sr = init_sysroot(tmp_path / "sys")
    evil = make_tree(tmp_path / "evil", files={"usr/bin/sudo": benign})
    real = directory._read_hash

    def hash_then_rewrite(fd: int) -> tuple[str, bytes | None]:
        found = real(fd)
        if os.readlink(f"/proc/self/fd/{fd}").endswith("usr/bin/sudo"):
            (evil / "usr/bin/sudo").write_bytes(b"EVIL" + benign[4:])  # same inode
        return found

    monkeypatch.setattr(directory, "_read_hash", hash_then_rewrite)
    with pytest.raises(FileChanged, match="usr/bin/sudo"):
        deploy_tree(sr, evil)
    monkeypatch.setattr(directory, "_read_hash", real)
    good = make_tree(tmp_path / "good", version="2", files={"usr/bin/sudo": benign})
    dep = deploy_tree(sr, good)
    assert (sr.tree(dep) / "usr/bin/sudo").read_bytes() == benign


def _cache(sr: Sysroot) -> Path:
    return sr.meta / "import-cache.json"


@pytest.fixture
def cached(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[Sysroot, Path]]:
    monkeypatch.setattr(HashCache, "RACY_NS", 0)  # keep every entry, however recent
    sr = init_sysroot(tmp_path / "sys")
    src = make_tree(tmp_path / "src")
    deploy_tree(sr, src)
    yield sr, src


def test_the_hash_cache_is_for_root_only_and_knows_the_device(
    cached: tuple[Sysroot, Path]
) -> None:
    sr, src = cached
    assert stat.S_IMODE(_cache(sr).stat().st_mode) == 0o600
    entries = json.loads(_cache(sr).read_text())["files"]
    st = (src / "usr/bin/hello").stat()
    assert entries["usr/bin/hello"][:2] == [st.st_dev, st.st_ino]
    # The same inode number on another filesystem is another file.
    cache = HashCache(_cache(sr), src)
    other_device = os.stat_result((st.st_mode, st.st_ino, st.st_dev + 1, *st[3:]))
    assert cache.get("usr/bin/hello", st) is not None
    assert cache.get("usr/bin/hello", other_device) is None


@pytest.mark.parametrize("entry", [0, None, "x", [], [1, 2, 3, 4, 5, "nothex"], {"a": 1},
                                   [1, 2, 3, 4, 5, 6]])
def test_a_damaged_hash_cache_entry_is_ignored(cached: tuple[Sysroot, Path], entry: object) -> None:
    sr, src = cached
    data = json.loads(_cache(sr).read_text())
    data["files"] = {rel: entry for rel in data["files"]}
    _cache(sr).write_text(json.dumps(data))
    result = cli("deploy", "--sysroot", sr.path, src)
    assert result.exit_code == 0, f"{result.stderr}{result.exception!r}"


def test_etc_merge_copies_the_file_it_walked_never_a_symlink_put_in_its_place(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, victim: Path
) -> None:
    defaults = tmp_path / "defaults"
    defaults.mkdir()
    (defaults / "motd").write_text("hello\n")
    (defaults / "motd").chmod(0o6755)
    real = etcmerge.read_tree

    def read_then_swap(root: Path) -> dict[str, Node]:
        nodes = real(root)
        (root / "motd").unlink()
        (root / "motd").symlink_to(victim)
        return nodes

    monkeypatch.setattr(etcmerge, "read_tree", read_then_swap)
    with pytest.raises(FileChanged, match="motd"):
        etcmerge.copy_etc(defaults, tmp_path / "etc")
    assert stat.S_IMODE(victim.stat().st_mode) == 0o600
    assert not (tmp_path / "etc/motd").exists()


def test_a_source_named_through_a_symlink_is_still_read(tmp_path: Path) -> None:
    """Only what is below the source is read without following symlinks."""
    src = make_tree(tmp_path / "src")
    (tmp_path / "link").symlink_to(src)
    sr = init_sysroot(tmp_path / "sys")
    dep = deploy_tree(sr, tmp_path / "link")
    assert (sr.tree(dep) / "usr/bin/hello").read_bytes() == (src / "usr/bin/hello").read_bytes()


def test_etc_merge_never_walks_a_directory_swapped_for_a_symlink(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, victim: Path
) -> None:
    """A user who owns a directory of the live /etc swaps it for a link to one of root's
    while bootkit walks: the new /etc would get copies of root's files."""
    live = tmp_path / "live"
    (live / "app").mkdir(parents=True)
    (live / "app/conf").write_text("x\n")
    real = etctree._listing

    def list_then_swap(root: Path, seen: os.stat_result) -> list[tuple[str, os.stat_result, Node]]:
        found = real(root, seen)
        if root == live:
            (live / "app").rename(tmp_path / "app-aside")
            (live / "app").symlink_to(victim.parent)
        return found

    monkeypatch.setattr(etctree, "_listing", list_then_swap)
    with pytest.raises(FileChanged, match="app"):
        etcmerge.copy_etc(live, tmp_path / "etc")
    assert not (tmp_path / "etc/app/host-secret").exists()
