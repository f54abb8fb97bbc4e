"""The content store's names: what an object's key stands for, and the names the store
uses while it links, which no tree may share."""

from __future__ import annotations

import hashlib
import os
import stat
from pathlib import Path

import pytest
from support.helpers import deploy_tree, init_sysroot, make_tree, ok

from bootkit.base.xattrs import Xattrs
from bootkit.sysroot.store import (
    FileMeta,
    ObjectStore,
    create_file,
    key_matches,
    legacy_object_key,
    object_key,
)

HASH = "ab" * 32


def _meta(xattrs: Xattrs = ()) -> FileMeta:
    return FileMeta(stat.S_IFREG | 0o644, 0, 0, xattrs, 0.0)


def test_one_attribute_cannot_pass_for_two() -> None:
    one = _meta((("user.a", b"1\0user.b=2"),))
    two = _meta((("user.a", b"1"), ("user.b", b"2")))
    assert legacy_object_key(HASH, one) == legacy_object_key(HASH, two)  # the old ambiguity
    assert object_key(HASH, one) != object_key(HASH, two)


def test_keys_of_files_without_attributes_are_what_they_were() -> None:
    """The common case keeps sharing the objects older versions stored."""
    assert object_key(HASH, _meta()) == legacy_object_key(HASH, _meta())
    with_one = _meta((("user.a", b"1"),))
    assert object_key(HASH, with_one) != legacy_object_key(HASH, with_one)
    assert key_matches(legacy_object_key(HASH, with_one), HASH, with_one)
    assert not key_matches(legacy_object_key(HASH, with_one), HASH, _meta())


def test_fsck_accepts_an_object_stored_under_its_older_key(tmp_path: Path) -> None:
    sr = init_sysroot(tmp_path / "sys")
    src = make_tree(tmp_path / "src")
    os.setxattr(src / "usr/bin/hello", "user.origin", b"test")
    dep = deploy_tree(sr, src)
    path = sr.tree(dep) / "usr/bin/hello"
    st = path.stat()
    meta = FileMeta(st.st_mode, st.st_uid, st.st_gid, (("user.origin", b"test"),), 0.0)
    new = sr.objects.path(object_key(_content_hash(path), meta))
    assert new.stat().st_ino == st.st_ino
    old = sr.objects.path(legacy_object_key(_content_hash(path), meta))
    old.parent.mkdir(exist_ok=True)
    os.rename(new, old)  # as an older version named it
    assert ok("fsck", "--sysroot", sr.path).stdout.endswith("No problems found.\n")


def _content_hash(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_sharing_an_object_stored_meanwhile_uses_a_name_of_the_store(tmp_path: Path) -> None:
    """Another thread stores the same content first: the link to its object is made under
    a name of the store's own, never beside the file, where the tree may have a file."""
    store = ObjectStore(tmp_path / "objects")
    store.prepare()
    tree = tmp_path / "tree"
    tree.mkdir()
    (tree / "x.bootkit-tmp").write_bytes(b"the tree's own file\n")
    meta = _meta()
    key = object_key(HASH, meta)

    def fill_while_another_stores(dst: str) -> None:
        create_file(dst, meta, lambda fd: os.write(fd, b"content\n"))
        other = tmp_path / "other"
        create_file(str(other), meta, lambda fd: os.write(fd, b"content\n"))
        store.path(key).parent.mkdir(exist_ok=True)
        os.link(other, store.path(key))

    assert store.link_into(key, str(tree / "x"), fill_while_another_stores)
    assert (tree / "x").stat().st_ino == store.path(key).stat().st_ino
    assert (tree / "x.bootkit-tmp").read_bytes() == b"the tree's own file\n"
    assert (tree / "x.bootkit-tmp").stat().st_nlink == 1
    assert os.listdir(store.tmp) == []


def test_a_file_is_never_created_through_what_is_in_its_place(tmp_path: Path) -> None:
    (tmp_path / "target").write_bytes(b"keep\n")
    (tmp_path / "link").symlink_to(tmp_path / "target")
    with pytest.raises(FileExistsError):
        create_file(str(tmp_path / "link"), _meta(), lambda fd: os.write(fd, b"x"))
    assert (tmp_path / "target").read_bytes() == b"keep\n"


def test_etc_defaults_shipped_in_etc_are_stored_once_and_the_live_etc_is_a_copy(
        tmp_path: Path) -> None:
    sr = init_sysroot(tmp_path / "sysroot")
    deps = []
    for n in (1, 2):
        tree = make_tree(tmp_path / f"tree{n}", version=str(n))
        os.rename(tree / "usr/etc", tree / "etc")  # shipped the usual way, in /etc
        deps.append(deploy_tree(sr, tree))
    first, second = (sr.tree(d) for d in deps)
    defaults = [(t / "usr/etc/hostname").stat() for t in (first, second)]
    assert defaults[0].st_ino == defaults[1].st_ino  # one object for both deployments
    live = [(t / "etc/hostname").stat() for t in (first, second)]
    assert len({live[0].st_ino, live[1].st_ino, defaults[0].st_ino}) == 3
    assert live[0].st_nlink == 1 and live[1].st_nlink == 1
    ok("fsck", "--sysroot", sr.path)
