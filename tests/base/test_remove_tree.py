"""Removing trees that hold read-only directories and files, as deployments do."""

from __future__ import annotations

import os
import shutil
import sys
import traceback
from collections.abc import Callable
from pathlib import Path

import pytest

from bootkit.base.files import remove_path, remove_tree, temp_path_cleanup

NOBODY = 65534


def _locked_tree(root: Path) -> Path:
    """A tree with a read-only directory (holding a read-only file) and an unreadable one."""
    (root / "usr/lib/ro/deeper").mkdir(parents=True)
    (root / "usr/lib/ro/inside").write_text("x\n")
    (root / "usr/lib/ro/inside").chmod(0o444)
    (root / "usr/lib/ro/deeper/file").write_text("y\n")
    (root / "usr/lib/ro/deeper").chmod(0o555)
    (root / "usr/lib/ro").chmod(0o555)
    (root / "usr/lib/closed").mkdir()
    (root / "usr/lib/closed/secret").write_text("z\n")
    (root / "usr/lib/closed").chmod(0o000)
    (root / "usr/lib/to-ro").symlink_to("ro")
    return root


def _as_unprivileged(where: Path, action: Callable[[], None]) -> None:
    """Run `action` with permission checks in force: directly, or as root in a child
    process that has become nobody (root would remove read-only directories anyway).
    Either way `action` runs in `where`, and names paths relative to it."""
    if os.geteuid() != 0:
        cwd = os.getcwd()
        os.chdir(where)
        try:
            action()
        finally:
            os.chdir(cwd)
        return
    for path in [where, *where.rglob("*")]:
        os.chown(path, NOBODY, NOBODY, follow_symlinks=False)
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child reports through its exit status
        status = 1
        try:
            os.chdir(where)  # its parents are root's and closed to nobody
            os.setgroups([])
            os.setgid(NOBODY)
            os.setuid(NOBODY)
            action()
            status = 0
        except BaseException:
            traceback.print_exc(file=sys.stderr)
        finally:
            os._exit(status)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0, "see the traceback on stderr"


def _removes(path: Path) -> Callable[[], None]:
    def action() -> None:
        relative = Path(path.name)
        remove_tree(relative)
        assert not os.path.lexists(relative)

    return action


def test_remove_tree_with_read_only_directories_and_files(tmp_path: Path) -> None:
    tree = _locked_tree(tmp_path / "tree")
    outside = tmp_path / "outside"
    outside.mkdir()
    (tree / "usr/escape").symlink_to(outside)
    _as_unprivileged(tmp_path, _removes(tree))
    assert not tree.exists()
    assert outside.is_dir()  # a symlink in the tree is removed, not followed


def test_without_opening_up_the_same_tree_cannot_be_removed(tmp_path: Path) -> None:
    """The control: what remove_tree copes with does stop a plain rmtree."""
    tree = _locked_tree(tmp_path / "tree")

    def plain() -> None:
        with pytest.raises(PermissionError):
            shutil.rmtree("tree")

    _as_unprivileged(tmp_path, plain)
    assert (tree / "usr/lib/ro/inside").exists()
    _as_unprivileged(tmp_path, _removes(tree))


def test_remove_tree_of_nothing_and_remove_path(tmp_path: Path) -> None:
    remove_tree(tmp_path / "missing")
    remove_path(tmp_path / "missing")
    (tmp_path / "file").write_text("x")
    (tmp_path / "dir/sub").mkdir(parents=True)
    (tmp_path / "dir-link").symlink_to("dir")
    remove_path(tmp_path / "dir-link")
    assert (tmp_path / "dir/sub").is_dir() and not (tmp_path / "dir-link").is_symlink()
    remove_path(tmp_path / "file")
    remove_path(tmp_path / "dir")
    assert list(tmp_path.iterdir()) == []
    (tmp_path / "file").write_text("x")
    with pytest.raises(NotADirectoryError):
        remove_tree(tmp_path / "file")


def test_temp_path_cleanup_removes_a_half_made_tree(tmp_path: Path) -> None:
    target = tmp_path / "half"
    with pytest.raises(RuntimeError, match="interrupted"), temp_path_cleanup(target) as made:
        _locked_tree(made)
        raise RuntimeError("interrupted")
    assert not target.exists()
