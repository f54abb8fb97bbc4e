"""Archives that describe a tree less directly than a directory does: members without
their parent directories, and hardlinks to files a digest leaves out. The tree on disk,
its digests and what fsck says of it must not depend on that."""

from __future__ import annotations

import os
import stat
import subprocess
import tarfile
from pathlib import Path

import pytest
from support.helpers import deploy_tree, init_sysroot, make_tree, ok

from bootkit.sysroot.importers.tar import IMPLICIT_DIR_MODE
from bootkit.sysroot.layout import Sysroot


def _files_only_tar(tree: Path, archive: Path) -> Path:
    """`tar -cf x.tar $(find . ! -type d)`: no directory members at all."""
    names = sorted(str(p.relative_to(tree)) for p in tree.rglob("*") if not p.is_dir()
                   or p.is_symlink())
    subprocess.run(["tar", "--no-recursion", "--numeric-owner", "-C", str(tree), "-cf",
                    str(archive), *names], check=True)
    return archive


def _fsck_clean(sr: Sysroot) -> None:
    assert ok("fsck", "--sysroot", sr.path).stdout.endswith("No problems found.\n")


@pytest.mark.parametrize("umask", [0o022, 0o077])
def test_directories_an_archive_leaves_out_are_0755_roots_whatever_the_umask(
    tmp_path: Path, umask: int
) -> None:
    tree = make_tree(tmp_path / "src")
    for path in [tree, *tree.rglob("*")]:
        if path.is_dir() and not path.is_symlink():
            path.chmod(IMPLICIT_DIR_MODE)  # as the archive's parents will be made
    archive = _files_only_tar(tree, tmp_path / "files.tar")
    sr_dir, sr_tar = init_sysroot(tmp_path / "a"), init_sysroot(tmp_path / "b")
    from_dir = deploy_tree(sr_dir, tree)
    old = os.umask(umask)
    try:
        from_tar = deploy_tree(sr_tar, archive)
    finally:
        os.umask(old)
    for rel in ("usr", "usr/bin", "usr/lib/modules"):
        st = (sr_tar.tree(from_tar) / rel).stat()
        assert (stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid) == (0o755, 0, 0), rel
    assert from_tar.content_digest == from_dir.content_digest
    assert from_tar.os_digest == from_dir.os_digest
    _fsck_clean(sr_tar)


def test_a_directory_named_after_its_content_takes_its_own_mode(tmp_path: Path) -> None:
    """A member for a directory that came implicitly before: the later word counts."""
    tree = make_tree(tmp_path / "src")
    archive = tmp_path / "late.tar"
    with tarfile.open(archive, "w") as tf:
        for rel in ("usr/bin/hello", "usr/lib/os-release"):
            tf.add(tree / rel, arcname=rel, recursive=False)
        tf.add(tree / "usr/lib/modules", arcname="usr/lib/modules")
        late = tf.gettarinfo(tree / "usr/bin", arcname="usr/bin")
        late.mode = 0o750
        tf.addfile(late)
    sr = init_sysroot(tmp_path / "sys")
    dep = deploy_tree(sr, archive)
    assert stat.S_IMODE((sr.tree(dep) / "usr/bin").stat().st_mode) == 0o750
    _fsck_clean(sr)


@pytest.mark.parametrize("target", ["usr/etc/motd", "var/lib/motd"])
def test_a_hardlink_to_a_file_the_digest_leaves_out(tmp_path: Path, target: str) -> None:
    """usr/share/motd archived as a link to a file of /etc defaults or of /var, which
    fsck's digest leaves out: on disk it is a file like any other."""
    tree = make_tree(tmp_path / "src", files={target: "hi\n"})
    (tree / "usr/share").mkdir()
    os.link(tree / target, tree / "usr/share/motd")
    archive = tmp_path / "tree.tar"
    # The target first, so that the archive has usr/share/motd link to it.
    top = sorted(os.listdir(tree), key=lambda name: name != target.split("/")[0])
    subprocess.run(["tar", "-C", str(tree), "--numeric-owner", "--sort=name", "-cf",
                    str(archive), *top], check=True)
    listing = subprocess.run(["tar", "-tvf", str(archive)], capture_output=True, text=True)
    assert f"usr/share/motd link to {target}" in listing.stdout
    sr = init_sysroot(tmp_path / "sys")
    from_tar = deploy_tree(sr, archive)
    _fsck_clean(sr)
    from_dir = deploy_tree(init_sysroot(tmp_path / "other"), tree)
    assert from_tar.content_digest == from_dir.content_digest
