"""The /etc three-way merge and the layout of imported trees, on real directory trees."""

from __future__ import annotations

import os
import re
import stat
from pathlib import Path

import pytest
from support.etcspec import BASE, GONE, Dir, File, Link, build, edit, normalized, snapshot
from support.trees import user_xattrs_supported

from bootkit.errors import BootkitError
from bootkit.sysroot.etcmerge import copy_etc, etc_from_tree, merge_etc
from bootkit.sysroot.etctree import etc_changes

# (old defaults, old live, new defaults, expected new live)
MERGES = {
    "modified file wins over unchanged default": (
        BASE,
        edit(BASE, {"hosts": "10.0.0.1 build\n"}),
        BASE,
        edit(BASE, {"hosts": "10.0.0.1 build\n"}),
    ),
    "added file comes along": (
        BASE,
        edit(BASE, {"motd.d/local": "site notice\n"}),
        BASE,
        edit(BASE, {"motd.d/local": "site notice\n"}),
    ),
    "deleted file stays deleted": (
        BASE,
        edit(BASE, {"issue": GONE}),
        BASE,
        edit(BASE, {"issue": GONE}),
    ),
    "deleted file stays deleted though upstream changed it": (
        BASE,
        edit(BASE, {"issue": GONE}),
        edit(BASE, {"issue": "Debian GNU/Linux 13\n"}),
        edit(BASE, {"issue": GONE}),
    ),
    "new default file appears": (
        BASE,
        BASE,
        edit(BASE, {"ssh/ssh_config": "Host *\n"}),
        edit(BASE, {"ssh/ssh_config": "Host *\n"}),
    ),
    "default changed upstream only: new default wins": (
        BASE,
        BASE,
        edit(BASE, {"ssh/sshd_config": "PermitRootLogin prohibit-password\n"}),
        edit(BASE, {"ssh/sshd_config": "PermitRootLogin prohibit-password\n"}),
    ),
    "changed locally and upstream: local wins": (
        BASE,
        edit(BASE, {"ssh/sshd_config": "PermitRootLogin yes\n"}),
        edit(BASE, {"ssh/sshd_config": "PermitRootLogin prohibit-password\n"}),
        edit(BASE, {"ssh/sshd_config": "PermitRootLogin yes\n"}),
    ),
    "same size, other bytes is a modification": (
        BASE,
        edit(BASE, {"hosts": "127.0.0.2 localhost\n"}),
        edit(BASE, {"hosts": "127.0.0.3 localhost\n"}),
        edit(BASE, {"hosts": "127.0.0.2 localhost\n"}),
    ),
    "added nested directories with their content": (
        BASE,
        edit(BASE, {"app": Dir(0o750), "app/conf.d": Dir(), "app/conf.d/a": "a=1\n"}),
        edit(BASE, {"issue": "Debian GNU/Linux 13\n"}),
        edit(
            BASE,
            {
                "issue": "Debian GNU/Linux 13\n",
                "app": Dir(0o750),
                "app/conf.d": Dir(),
                "app/conf.d/a": "a=1\n",
            },
        ),
    ),
    "deleted directory stays deleted": (
        BASE,
        edit(BASE, {"ssh": GONE}),
        edit(BASE, {"ssh/sshd_config": "changed\n", "ssh/moduli": "1 2 3\n"}),
        edit(BASE, {"ssh": GONE}),
    ),
    "directory dropped upstream keeps the admin's files only": (
        BASE,
        edit(BASE, {"motd.d/local": "site notice\n"}),
        edit(BASE, {"motd.d": GONE}),
        edit(BASE, {"motd.d/welcome": GONE, "motd.d/local": "site notice\n"}),
    ),
    "added symlink": (
        BASE,
        edit(BASE, {"resolv.conf": Link("../run/resolv.conf")}),
        BASE,
        edit(BASE, {"resolv.conf": Link("../run/resolv.conf")}),
    ),
    "retargeted symlink wins": (
        BASE,
        edit(BASE, {"localtime": Link("/usr/share/zoneinfo/Europe/Berlin")}),
        edit(BASE, {"localtime": Link("/usr/share/zoneinfo/Etc/UTC")}),
        edit(BASE, {"localtime": Link("/usr/share/zoneinfo/Europe/Berlin")}),
    ),
    "deleted symlink stays deleted": (
        BASE,
        edit(BASE, {"localtime": GONE}),
        BASE,
        edit(BASE, {"localtime": GONE}),
    ),
    "file replaced by a symlink": (
        BASE,
        edit(BASE, {"hosts": Link("/run/hosts")}),
        edit(BASE, {"hosts": "127.0.0.1 localhost new\n"}),
        edit(BASE, {"hosts": Link("/run/hosts")}),
    ),
    "file mode change survives": (
        BASE,
        edit(BASE, {"hosts": File("127.0.0.1 localhost\n", 0o600)}),
        BASE,
        edit(BASE, {"hosts": File("127.0.0.1 localhost\n", 0o600)}),
    ),
    "special mode bits survive": (
        BASE,
        edit(BASE, {"tool": File("#!/bin/sh\n", 0o4755), "shared": Dir(0o1777)}),
        BASE,
        edit(BASE, {"tool": File("#!/bin/sh\n", 0o4755), "shared": Dir(0o1777)}),
    ),
    "directory mode change keeps local metadata, new content": (
        BASE,
        edit(BASE, {"ssh": Dir(0o700)}),
        edit(BASE, {"ssh/sshd_config": "new default\n"}),
        edit(BASE, {"ssh": Dir(0o700), "ssh/sshd_config": "new default\n"}),
    ),
    "read-only added directory gets its content": (
        BASE,
        edit(BASE, {"ro": Dir(0o555), "ro/x": "x\n"}),
        BASE,
        edit(BASE, {"ro": Dir(0o555), "ro/x": "x\n"}),
    ),
    "directory replaced by a symlink locally, kept a directory upstream": (
        BASE,
        edit(BASE, {"motd.d": Link("/run/motd.d")}),
        edit(BASE, {"motd.d/news": "new\n"}),
        edit(BASE, {"motd.d": Link("/run/motd.d")}),
    ),
    "file replaced by a directory locally, kept a file upstream": (
        BASE,
        edit(BASE, {"issue": Dir(), "issue/text": "custom\n"}),
        edit(BASE, {"issue": "Debian GNU/Linux 13\n"}),
        edit(BASE, {"issue": Dir(), "issue/text": "custom\n"}),
    ),
    "admin's directory where upstream adds the same directory": (
        BASE,
        edit(BASE, {"app": Dir(0o700), "app/local": "l\n"}),
        edit(BASE, {"app": Dir(), "app/default": "d\n"}),
        edit(BASE, {"app": Dir(0o700), "app/local": "l\n", "app/default": "d\n"}),
    ),
    "empty defaults": ({}, {"a": "1\n"}, {}, {"a": "1\n"}),
}


@pytest.mark.parametrize("case", list(MERGES))
def test_merge(tmp_path: Path, case: str) -> None:
    old_defaults_spec, old_live_spec, new_defaults_spec, expected = MERGES[case]
    old_defaults = build(tmp_path / "old/usr/etc", old_defaults_spec)
    old_live = build(tmp_path / "old/etc", old_live_spec)
    new_defaults = build(tmp_path / "new/usr/etc", new_defaults_spec)
    before = snapshot(old_live), snapshot(new_defaults)

    applied = merge_etc(old_defaults, old_live, new_defaults, tmp_path / "new/etc")

    assert snapshot(tmp_path / "new/etc") == normalized(expected)
    assert applied == etc_changes(old_defaults, old_live)
    assert (snapshot(old_live), snapshot(new_defaults)) == before


def test_first_deployment_is_a_copy(tmp_path: Path) -> None:
    defaults = build(tmp_path / "usr/etc", edit(BASE, {"ssh": Dir(0o700)}))
    os.chmod(defaults, 0o751)
    copy_etc(defaults, tmp_path / "etc")
    assert snapshot(tmp_path / "etc") == snapshot(defaults)
    assert os.stat(tmp_path / "etc").st_mode & 0o7777 == 0o751
    assert etc_changes(defaults, tmp_path / "etc") == []


def test_merge_without_old_deployment_copies(tmp_path: Path) -> None:
    defaults = build(tmp_path / "usr/etc", BASE)
    assert merge_etc(None, None, defaults, tmp_path / "etc") == []
    assert snapshot(tmp_path / "etc") == normalized(BASE)


def test_new_etc_is_independent_of_defaults(tmp_path: Path) -> None:
    old_defaults = build(tmp_path / "old/usr/etc", BASE)
    old_live = build(tmp_path / "old/etc", edit(BASE, {"hosts": "local\n"}))
    new_defaults = build(tmp_path / "new/usr/etc", BASE)
    dest = tmp_path / "new/etc"
    merge_etc(old_defaults, old_live, new_defaults, dest)
    for rel in ("hosts", "issue", "ssh/sshd_config"):
        assert not os.path.samefile(dest / rel, new_defaults / rel)
        assert not os.path.samefile(dest / rel, old_live / rel)
    (dest / "issue").write_text("edited\n")
    assert (new_defaults / "issue").read_text() == BASE["issue"]


def test_times_survive(tmp_path: Path) -> None:
    defaults = build(tmp_path / "usr/etc", BASE)
    os.utime(defaults / "issue", ns=(1_000_000_000, 2_000_000_000))
    copy_etc(defaults, tmp_path / "etc")
    assert os.stat(tmp_path / "etc/issue").st_mtime_ns == 2_000_000_000


def test_dest_must_not_exist(tmp_path: Path) -> None:
    defaults = build(tmp_path / "usr/etc", BASE)
    (tmp_path / "etc").mkdir()
    with pytest.raises(BootkitError, match="already exists"):
        merge_etc(defaults, defaults, defaults, tmp_path / "etc")


CONFLICTS = {
    "modified file becomes a directory upstream": (
        edit(BASE, {"hosts": "local\n"}),
        edit(BASE, {"hosts": Dir(), "hosts/a": "a\n"}),
        "hosts",
    ),
    "added file where upstream adds a directory": (
        edit(BASE, {"x.d": "local\n"}),
        edit(BASE, {"x.d": Dir()}),
        "x.d",
    ),
    "added directory where upstream adds a file": (
        edit(BASE, {"x.d": Dir(), "x.d/a": "a\n"}),
        edit(BASE, {"x.d": "default\n"}),
        "x.d",
    ),
    "content added in a directory that becomes a file upstream": (
        edit(BASE, {"motd.d/local": "mine\n"}),
        edit(BASE, {"motd.d": "now a file\n"}),
        "motd.d",
    ),
    "directory mode changed, becomes a symlink upstream": (
        edit(BASE, {"ssh": Dir(0o700)}),
        edit(BASE, {"ssh": Link("../usr/share/ssh")}),
        "ssh",
    ),
}


@pytest.mark.parametrize("case", list(CONFLICTS))
def test_conflict_names_the_path(tmp_path: Path, case: str) -> None:
    live_spec, new_spec, path = CONFLICTS[case]
    old_defaults = build(tmp_path / "old/usr/etc", BASE)
    old_live = build(tmp_path / "old/etc", live_spec)
    new_defaults = build(tmp_path / "new/usr/etc", new_spec)
    before = snapshot(old_live)
    with pytest.raises(BootkitError) as caught:
        merge_etc(old_defaults, old_live, new_defaults, tmp_path / "new/etc")
    assert f"/etc/{path}:" in caught.value.message
    assert caught.value.hint
    assert snapshot(old_live) == before


def test_symlinked_directory_upstream_never_leads_writes_outside(tmp_path: Path) -> None:
    outside = build(tmp_path / "outside", {"keep": "untouched\n"})
    old_defaults = build(tmp_path / "old/usr/etc", BASE)
    old_live = build(
        tmp_path / "old/etc", edit(BASE, {"motd.d/local": "mine\n", "motd.d/keep": GONE})
    )
    new_defaults = build(tmp_path / "new/usr/etc", edit(BASE, {"motd.d": Link(str(outside))}))
    with pytest.raises(BootkitError, match=re.escape("/etc/motd.d:")):
        merge_etc(old_defaults, old_live, new_defaults, tmp_path / "new/etc")
    assert snapshot(outside) == {"keep": File("untouched\n")}


def test_deletion_below_an_upstream_symlink_stays_inside(tmp_path: Path) -> None:
    outside = build(tmp_path / "outside", {"welcome": "untouched\n"})
    old_defaults = build(tmp_path / "old/usr/etc", BASE)
    old_live = build(tmp_path / "old/etc", edit(BASE, {"motd.d/welcome": GONE}))
    new_defaults = build(tmp_path / "new/usr/etc", edit(BASE, {"motd.d": Link(str(outside))}))
    merge_etc(old_defaults, old_live, new_defaults, tmp_path / "new/etc")
    assert snapshot(outside) == {"welcome": File("untouched\n")}
    assert os.readlink(tmp_path / "new/etc/motd.d") == str(outside)


# --- owners and extended attributes ------------------------------------------------

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="changing owners needs root")


@needs_root
def test_owner_changes_survive(tmp_path: Path) -> None:
    old_defaults = build(tmp_path / "old/usr/etc", BASE)
    old_live = build(tmp_path / "old/etc", edit(BASE, {"app": Dir(0o750), "app/secret": "s\n"}))
    os.chown(old_live / "hosts", 1234, 5678)
    os.chown(old_live / "app", 0, 4321)
    os.chown(old_live / "app/secret", 0, 4321)
    os.lchown(old_live / "localtime", 99, 99)
    os.chown(old_live / "ssh", 0, 22)
    new_defaults = build(tmp_path / "new/usr/etc", edit(BASE, {"hosts": "new default\n"}))

    changes = {c.path: c for c in etc_changes(old_defaults, old_live)}
    assert changes["hosts"].changed == ("owner",)
    assert changes["ssh"].changed == ("owner",)
    assert changes["localtime"].changed == ("owner",)

    dest = tmp_path / "new/etc"
    merge_etc(old_defaults, old_live, new_defaults, dest)

    def owner(rel: str) -> tuple[int, int]:
        st = os.lstat(dest / rel)
        return st.st_uid, st.st_gid

    assert owner("hosts") == (1234, 5678)
    assert (dest / "hosts").read_text() == BASE["hosts"]  # the local file wins whole
    assert owner("app") == (0, 4321)
    assert owner("app/secret") == (0, 4321)
    assert owner("localtime") == (99, 99)
    assert owner("ssh") == (0, 22)
    assert owner("issue") == (0, 0)


def test_special_files_the_admin_added_come_along(tmp_path: Path) -> None:
    old_defaults = build(tmp_path / "old/usr/etc", BASE)
    old_live = build(tmp_path / "old/etc", BASE)
    os.mkfifo(old_live / "initctl", 0o640)
    if os.geteuid() == 0:
        os.mknod(old_live / "console", stat.S_IFCHR, os.makedev(5, 1))
        os.chmod(old_live / "console", 0o620)
    merge_etc(old_defaults, old_live, old_defaults, tmp_path / "new")
    for rel, st in {p.name: p.lstat() for p in (tmp_path / "new").iterdir()}.items():
        want = old_live.joinpath(rel).lstat()
        assert (st.st_mode, st.st_rdev) == (want.st_mode, want.st_rdev), rel


def test_xattrs_survive(tmp_path: Path) -> None:
    if not user_xattrs_supported(tmp_path):
        pytest.skip("the filesystem under tmp_path has no user.* extended attributes")
    old_defaults = build(tmp_path / "old/usr/etc", BASE)
    old_live = build(tmp_path / "old/etc", edit(BASE, {"added": "a\n"}))
    new_defaults = build(tmp_path / "new/usr/etc", BASE)
    os.setxattr(old_live / "hosts", "user.origin", b"admin")
    os.setxattr(old_live / "added", "user.origin", b"admin too")
    os.setxattr(new_defaults / "issue", "user.origin", b"vendor")

    changes = {c.path: c for c in etc_changes(old_defaults, old_live)}
    assert changes["hosts"].changed == ("xattrs",)
    assert changes["added"].kind == "added"

    dest = tmp_path / "new/etc"
    merge_etc(old_defaults, old_live, new_defaults, dest)
    assert os.getxattr(dest / "hosts", "user.origin") == b"admin"
    assert os.getxattr(dest / "added", "user.origin") == b"admin too"
    assert os.getxattr(dest / "issue", "user.origin") == b"vendor"
    assert "user.origin" not in os.listxattr(dest / "ssh/sshd_config")


# --- trees as imported --------------------------------------------------------------


def test_etc_from_tree_moves_etc_to_usr_etc(tmp_path: Path) -> None:
    tree = build(tmp_path / "tree", {"usr": Dir(), "etc": Dir(), "etc/hosts": "h\n"})
    etc_from_tree(tree)
    assert not (tree / "etc").exists()
    assert (tree / "usr/etc/hosts").read_text() == "h\n"


def test_etc_from_tree_keeps_usr_etc(tmp_path: Path) -> None:
    tree = build(tmp_path / "tree", {"usr": Dir(), "usr/etc": Dir(), "usr/etc/a": "a\n"})
    etc_from_tree(tree)
    assert snapshot(tree) == normalized({"usr": Dir(), "usr/etc": Dir(), "usr/etc/a": "a\n"})


def test_etc_from_tree_drops_empty_etc_beside_usr_etc(tmp_path: Path) -> None:
    tree = build(tmp_path / "tree", {"etc": Dir(), "usr": Dir(), "usr/etc": Dir()})
    etc_from_tree(tree)
    assert not (tree / "etc").exists()


def test_etc_from_tree_refuses_two_sets_of_defaults(tmp_path: Path) -> None:
    tree = build(
        tmp_path / "tree",
        {"etc": Dir(), "etc/a": "a\n", "usr": Dir(), "usr/etc": Dir(), "usr/etc/b": "b\n"},
    )
    with pytest.raises(BootkitError, match="both etc and usr/etc"):
        etc_from_tree(tree)
    assert (tree / "etc/a").exists() and (tree / "usr/etc/b").exists()


def test_etc_from_tree_without_etc_gives_empty_defaults(tmp_path: Path) -> None:
    tree = build(tmp_path / "tree", {"usr": Dir()})
    etc_from_tree(tree)
    assert list((tree / "usr/etc").iterdir()) == []


def test_etc_from_tree_refuses_symlinked_etc(tmp_path: Path) -> None:
    tree = build(tmp_path / "tree", {"usr": Dir(), "etc": Link("usr")})
    with pytest.raises(BootkitError, match="not a directory"):
        etc_from_tree(tree)
