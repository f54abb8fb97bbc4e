"""The atomic-desktop layout: home, root, opt, srv, mnt, media and usr/local are symlinks
into /var in every deployment; the first deployment of an OS moves their content into
the shared /var, later ones leave it out and never touch the shared data; the tree
still matches its digest; and nothing a hostile tree says leads a deploy outside it."""

from __future__ import annotations

import os
import posixpath
import tarfile
from pathlib import Path

import pytest
from support.damage import found, fsck
from support.helpers import fails, init_sysroot, make_tree, ok, snapshot, untidy
from support.trees import IS_ROOT, describe_tree

from bootkit.records.deployment import Deployment
from bootkit.sysroot.contentdigest import os_digest
from bootkit.sysroot.desktoplayout import PLACES, TMPFILES
from bootkit.sysroot.layout import Sysroot

LINKS = {
    "home": "var/home", "root": "var/roothome", "opt": "var/opt", "srv": "var/srv",
    "mnt": "var/mnt", "media": "run/media", "usr/local": "../var/usrlocal",
}
# Where each place's content goes in the shared /var.
SHARED = {"home": "home", "root": "roothome", "opt": "opt", "srv": "srv", "mnt": "mnt",
          "usr/local": "usrlocal"}


def _newest(sr: Sysroot) -> Deployment:
    return max(sr.deployments(), key=lambda d: d.serial)


def _shared_var(sr: Sysroot) -> Path:
    return sr.stateroot("test") / "var"


def _warnings(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("bootkit: warning:")]


def _content_tree(root: Path, version: str = "1") -> Path:
    """A tree with content in each place that moves: files, nested directories with their
    own modes and owners, symlinks, and a usr/local file that is a hardlink in usr/."""
    tree = make_tree(root, version=version, files={
        "home/alice/notes.txt": "alice's notes\n",
        "home/alice/.config/app/settings": "dark=1\n",
        "root/.profile": "PS1='# '\n",
        "opt/vendor/bin/tool": "#!/bin/sh\n",
        "srv/www/index.html": "<p>hi</p>\n",
        "usr/local/bin/local-tool": "#!/bin/sh\necho local\n",
        "usr/etc/passwd": "root:x:0:0:root:/root:/bin/sh\nalice:x:1000:1000::/home/alice:/bin/sh\n",
    })
    (tree / "mnt").mkdir()
    (tree / "media").mkdir()
    (tree / "home/alice/notes.txt").chmod(0o600)
    (tree / "home/alice/.config").chmod(0o700)
    (tree / "opt/vendor/bin/tool").chmod(0o755)
    (tree / "root").chmod(0o700)
    (tree / "home/alice/latest").symlink_to("notes.txt")
    (tree / "home/alice/outside").symlink_to("/etc/shadow")
    os.link(tree / "usr/bin/hello", tree / "usr/local/bin/hello")
    if IS_ROOT:
        for path in [tree / "home/alice", *(tree / "home/alice").rglob("*")]:
            os.chown(path, 1000, 1000, follow_symlinks=False)
    return tree


def _tar_of(tree: Path, out: Path) -> Path:
    with tarfile.open(out, "w", format=tarfile.PAX_FORMAT) as tf:
        for name in sorted(os.listdir(tree)):
            tf.add(tree / name, name)
    return out


def _entries(root: Path) -> dict[str, tuple[object, ...]]:
    """What is below `root` (not `root` itself), as the importer's tests compare trees."""
    return {rel: what for rel, what in describe_tree(root).items() if rel != "."}


def _assert_laid_out(tree: Path) -> None:
    for path, link in LINKS.items():
        assert os.readlink(tree / path) == link, path
    assert (tree / TMPFILES).is_file()


def _assert_clean(sr: Sysroot) -> None:
    assert untidy(sr) == []
    status, report = fsck(sr.path)
    assert (status, found(report)) == (0, [])


@pytest.mark.parametrize("kind", ["directory", "tar"])
def test_the_first_deploy_moves_the_content_into_the_shared_var(tmp_path: Path, kind: str) -> None:
    tree = _content_tree(tmp_path / "tree")
    # Times long past: an mtime that moving the content changed would read as now.
    for parent, dirs, names in os.walk(tree):
        for name in [*dirs, *names]:
            os.utime(os.path.join(parent, name), (1e9, 1e9), follow_symlinks=False)
    expected = {place: _entries(tree / place) for place in SHARED}
    source = tree if kind == "directory" else _tar_of(tree, tmp_path / "tree.tar")
    sr = init_sysroot(tmp_path / "sys")
    result = ok("deploy", "--sysroot", sr.path, source)
    assert _warnings(result.stderr) == []
    _assert_laid_out(sr.tree(_newest(sr)))
    shared = _shared_var(sr)
    for place, name in SHARED.items():
        # Files, nested directories, modes, owners, mtimes; symlinks stay symlinks.
        assert _entries(shared / name) == expected[place], place
    assert os.readlink(shared / "home/alice/outside") == "/etc/shadow"
    assert (shared / "lib/app/state").read_text() == "seed\n"  # the tree's /var seeded it
    _assert_clean(sr)


def test_a_moved_file_shares_no_inode_with_a_deployment(tmp_path: Path) -> None:
    """usr/local/bin/hello was a hardlink to usr/bin/hello, a stored object: in /var it
    is a file of its own, and a write to it reaches no deployment."""
    sr = init_sysroot(tmp_path / "sys")
    ok("deploy", "--sysroot", sr.path, _content_tree(tmp_path / "tree"))
    moved = _shared_var(sr) / "usrlocal/bin/hello"
    assert moved.lstat().st_nlink == 1
    moved.write_text("changed through /var\n")
    assert (sr.tree(_newest(sr)) / "usr/bin/hello").read_text() == "#!/bin/sh\necho hello\n"
    _assert_clean(sr)


def test_a_later_deploy_leaves_content_out_with_one_warning(tmp_path: Path) -> None:
    sr = init_sysroot(tmp_path / "sys")
    ok("deploy", "--sysroot", sr.path, _content_tree(tmp_path / "tree1"))
    (_shared_var(sr) / "home/alice/notes.txt").write_text("edited by alice\n")
    before = snapshot(_shared_var(sr))
    tree = make_tree(tmp_path / "tree2", version="2", files={
        "home/bob/x": "x\n", "srv/www/a": "a\n", "srv/www/b/c": "c\n", "usr/local/y": "y\n",
    })
    (tree / "opt/empty/dirs/only").mkdir(parents=True)  # no content: no warning
    (tree / "mnt").symlink_to("var/mnt")  # the exact symlink already
    result = ok("deploy", "--sysroot", sr.path, tree)
    (warning,) = _warnings(result.stderr)
    assert "/home (1 entry), /srv (2 entries), /usr/local (1 entry) is left out" in warning
    assert "/opt" not in warning and "/mnt" not in warning
    assert snapshot(_shared_var(sr)) == before
    assert (_shared_var(sr) / "home/alice/notes.txt").read_text() == "edited by alice\n"
    _assert_laid_out(sr.tree(_newest(sr)))
    _assert_clean(sr)


def test_a_tree_without_any_of_the_places_deploys(tmp_path: Path) -> None:
    sr = init_sysroot(tmp_path / "sys")
    result = ok("deploy", "--sysroot", sr.path, make_tree(tmp_path / "tree"))
    assert _warnings(result.stderr) == []
    _assert_laid_out(sr.tree(_newest(sr)))
    modes = {name: (_shared_var(sr) / name).stat().st_mode & 0o7777 for name in SHARED.values()}
    assert modes == {name: 0o700 if name == "roothome" else 0o755 for name in SHARED.values()}
    _assert_clean(sr)


def test_each_symlink_leads_to_a_directory_the_snippet_makes(tmp_path: Path) -> None:
    sr = init_sysroot(tmp_path / "sys")
    ok("deploy", "--sysroot", sr.path, make_tree(tmp_path / "tree1"))
    ok("deploy", "--sysroot", sr.path, make_tree(tmp_path / "tree2", version="2"))
    first, second = sorted(sr.deployments(), key=lambda d: d.serial)
    snippet = (sr.tree(second) / TMPFILES).read_text()
    lines = [line.split() for line in snippet.splitlines() if not line.startswith("#")]
    made = {fields[1]: fields[2] for fields in lines}
    assert all(fields[0] == "d" and fields[3:] == ["root", "root", "-"] for fields in lines)
    for path, link in LINKS.items():
        target = posixpath.normpath(posixpath.join("/", posixpath.dirname(path), link))
        assert made.pop(target) == ("0700" if path == "root" else "0755")
    assert made == {}
    # Stored once, like every file under usr/.
    assert (sr.tree(first) / TMPFILES).stat().st_ino == (sr.tree(second) / TMPFILES).stat().st_ino


def test_the_trees_own_etc_is_not_edited(tmp_path: Path) -> None:
    tree = _content_tree(tmp_path / "tree")
    passwd = (tree / "usr/etc/passwd").read_text()
    sr = init_sysroot(tmp_path / "sys")
    ok("deploy", "--sysroot", sr.path, tree)
    deployed = sr.tree(_newest(sr))
    assert (deployed / "etc/passwd").read_text() == passwd
    assert (deployed / "usr/etc/passwd").read_text() == passwd


def test_fsck_sees_a_changed_layout_symlink(tmp_path: Path) -> None:
    """The digest covers the symlinks as deployed, so a change to one is found."""
    sr = init_sysroot(tmp_path / "sys")
    ok("deploy", "--sysroot", sr.path, _content_tree(tmp_path / "tree"))
    dep = _newest(sr)
    (sr.tree(dep) / "home").unlink()
    (sr.tree(dep) / "home").mkdir(mode=0o755)
    status, report = fsck(sr.path)
    assert status == 1 and ("tree", dep.ref) in found(report)


# --- hostile trees -----------------------------------------------------------------------


@pytest.fixture
def host(tmp_path: Path) -> Path:
    """A directory outside every tree, with a file in it."""
    path = tmp_path / "host"
    path.mkdir()
    (path / "secret").write_text("a host file\n")
    return path


def test_symlinks_and_files_in_the_places_lead_nowhere(tmp_path: Path, host: Path) -> None:
    tree = make_tree(tmp_path / "evil", files={"media": "a file, not a directory\n"})
    (tree / "home").symlink_to(host)  # absolute: the host's, read from outside the tree
    (tree / "usr/local").symlink_to("../../..")
    (tree / "opt").symlink_to("/var/opt")  # leads where bootkit's does: replaced quietly
    (tree / "srv").symlink_to("var/srv")  # bootkit's own
    host_before = snapshot(host)
    sr = init_sysroot(tmp_path / "sys")
    result = ok("deploy", "--sysroot", sr.path, tree)
    assert snapshot(host) == host_before
    left_out, replaced = _warnings(result.stderr)
    assert "content in /media (a regular file) is left out" in left_out
    assert f"led elsewhere: /home -> {host}, /usr/local -> ../../..;" in replaced
    assert "/opt" not in replaced
    _assert_laid_out(sr.tree(_newest(sr)))
    shared = _shared_var(sr)
    assert sorted(os.listdir(shared)) == sorted([*SHARED.values(), "lib"])
    assert not [p for name in SHARED.values() for p in (shared / name).iterdir()]
    _assert_clean(sr)


def test_a_target_the_trees_var_made_a_symlink_is_not_followed(tmp_path: Path, host: Path) -> None:
    tree = make_tree(tmp_path / "evil", files={"home/alice/x": "x\n", "opt/y": "y\n"})
    (tree / "var/home").symlink_to(host)
    host_before = snapshot(host)
    sr = init_sysroot(tmp_path / "sys")
    result = ok("deploy", "--sysroot", sr.path, tree)
    assert snapshot(host) == host_before
    (warning,) = _warnings(result.stderr)
    assert "content in /home (1 entry) is left out" in warning
    assert os.readlink(_shared_var(sr) / "home") == str(host)  # the system's now: kept
    assert (_shared_var(sr) / "opt/y").read_text() == "y\n"


def test_a_name_the_trees_var_has_already_stays(tmp_path: Path) -> None:
    tree = make_tree(tmp_path / "tree", files={
        "var/home/alice/from-var": "v\n", "home/alice/from-home": "h\n", "home/bob/b": "b\n",
    })
    sr = init_sysroot(tmp_path / "sys")
    result = ok("deploy", "--sysroot", sr.path, tree)
    (warning,) = _warnings(result.stderr)
    assert "content in /home (1 entry) is left out" in warning
    home = _shared_var(sr) / "home"
    assert sorted(p.name for p in home.rglob("*") if p.is_file()) == ["b", "from-var"]


def test_a_symlinked_tmpfiles_directory_is_refused_before_anything_moves(
    tmp_path: Path, host: Path
) -> None:
    tree = make_tree(tmp_path / "evil", files={"home/alice/x": "x\n"})
    (tree / "usr/lib/tmpfiles.d").symlink_to(host)
    sr = init_sysroot(tmp_path / "sys")
    host_before = snapshot(host)
    line = fails("deploy", "--sysroot", sr.path, tree)
    assert "/usr/lib/tmpfiles.d in " in line and "is a symlink, not a directory" in line, line
    assert snapshot(host) == host_before
    assert not (_shared_var(sr) / "home").exists()


def test_the_places_are_those_of_the_plan() -> None:
    """What tests and QEMU scenarios rely on, in one table."""
    assert {p.path: p.link for p in PLACES} == LINKS


def test_a_hardlink_to_a_replaced_name_keeps_its_content_in_the_digest() -> None:
    """usr/bin/b was noted as a hardlink to usr/local/a, which the layout took away: the
    digest still counts b as the file it is on disk."""
    file = "fabc:100644:0:0"
    imported = [f"usr/local/a\0{file}\n", "usr/bin/b\0husr/local/a\n", "usr/local\0d40755:0:0\n"]
    now = ["usr/local\0l../var/usrlocal\n"]
    on_disk = [f"usr/bin/b\0{file}\n", *now]
    assert os_digest(imported, ["usr/local"], now) == os_digest(on_disk)
