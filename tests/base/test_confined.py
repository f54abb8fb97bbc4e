"""Reading inside a tree as if chrooted: symlinks resolve in the tree, nothing leads out."""

from __future__ import annotations

import os
from pathlib import Path, PurePosixPath

import pytest

from bootkit.base.confined import Tree
from bootkit.base.filetypes import FileType
from bootkit.errors import BootkitError

HOST = b"a host file\n"
OWN = b"the tree's own file\n"


@pytest.fixture
def host_file(tmp_path: Path) -> Path:
    path = tmp_path / "host" / "secret"
    path.parent.mkdir()
    path.write_bytes(HOST)
    return path


def _tree(tmp_path: Path) -> Path:
    root = tmp_path / "tree"
    (root / "usr/lib").mkdir(parents=True)
    return root


def _own_copy(root: Path, host_path: Path, content: bytes = OWN) -> Path:
    """The file the tree itself has at the host path's name."""
    inside = root / str(host_path).lstrip("/")
    inside.parent.mkdir(parents=True, exist_ok=True)
    inside.write_bytes(content)
    return inside


def _read(tree: Tree, rel: str) -> bytes:
    with tree.open(rel) as f:
        return f.read()


def test_an_absolute_symlink_starts_at_the_trees_root(tmp_path: Path, host_file: Path) -> None:
    root = _tree(tmp_path)
    (root / "usr/lib/link").symlink_to(host_file)
    tree = Tree(root)
    assert tree.kind("usr/lib/link") is None  # the tree has no such file
    with pytest.raises(FileNotFoundError):
        _read(tree, "usr/lib/link")
    _own_copy(root, host_file)
    assert _read(tree, "usr/lib/link") == OWN
    assert tree.resolve("usr/lib/link") == PurePosixPath("/", str(host_file).lstrip("/"))
    assert tree.path("usr/lib/link") == root / str(host_file).lstrip("/")


def test_a_symlinked_directory_on_the_way_resolves_in_the_tree(
    tmp_path: Path, host_file: Path
) -> None:
    root = _tree(tmp_path)
    (root / "usr/lib/dir").symlink_to(host_file.parent)
    _own_copy(root, host_file)
    tree = Tree(root)
    assert _read(tree, "usr/lib/dir/secret") == OWN
    assert tree.listdir("usr/lib/dir") == ["secret"]


def test_relative_symlinks_are_followed(tmp_path: Path) -> None:
    root = _tree(tmp_path)
    (root / "usr/lib/os-release").write_bytes(OWN)
    (root / "etc").mkdir()
    (root / "etc/os-release").symlink_to("../usr/lib/os-release")
    (root / "lib").symlink_to("usr/lib")
    tree = Tree(root)
    assert _read(tree, "etc/os-release") == OWN
    assert _read(tree, "lib/os-release") == OWN
    assert _read(tree, "/usr/../etc/./os-release") == OWN


@pytest.mark.parametrize("target", ["../../../../../../../..", "../../..", "/../.."])
def test_dot_dot_above_the_root_is_refused(tmp_path: Path, host_file: Path, target: str) -> None:
    root = _tree(tmp_path)
    (root / "usr/lib/up").symlink_to(f"{target}{host_file}")
    tree = Tree(root)
    for following in (tree.resolve, tree.path, lambda rel: tree.read(rel, 100),
                      lambda rel: tree.kind(rel, strict=True)):
        with pytest.raises(BootkitError, match="leads out of the tree"):
            following("usr/lib/up")
        with pytest.raises(BootkitError, match="leads out of the tree"):
            following("../tree/usr")
    # Asking what it is follows nothing: it leads nowhere inside the tree.
    assert tree.kind("usr/lib/up") is None


def test_a_symlink_loop_is_refused(tmp_path: Path) -> None:
    root = _tree(tmp_path)
    (root / "usr/lib/a").symlink_to("b")
    (root / "usr/lib/b").symlink_to("/usr/lib/a")
    with pytest.raises(BootkitError, match="symlink loop"):
        Tree(root).resolve("usr/lib/a")
    with pytest.raises(BootkitError, match="symlink loop"):
        Tree(root).kind("usr/lib/a", strict=True)
    assert Tree(root).kind("usr/lib/a") is None


def test_a_symlink_that_leads_nowhere_in_the_tree_does_not_stop_a_mirror(tmp_path: Path) -> None:
    """A kernel's modules directory ships `build` and `source` links to the host's sources,
    which may climb above the root or loop: they are data, left out of a mirror."""
    root = _tree(tmp_path)
    mods = root / "usr/lib/modules/6.1"
    mods.mkdir(parents=True)
    (mods / "modules.order").write_bytes(b"")
    (mods / "build").symlink_to("../../../../../usr/src/linux")  # one '..' too many
    (mods / "source").symlink_to("source")  # a loop
    tree = Tree(root)
    assert tree.kind("usr/lib/modules/6.1/build") is None
    assert tree.kind("usr/lib/modules/6.1/source") is None
    assert tree.listdir("usr/lib/modules/6.1/build") == []
    tree.mirror("usr/lib/modules/6.1", tmp_path / "mirror")
    assert sorted(p.name for p in (tmp_path / "mirror").iterdir()) == ["modules.order"]


def test_only_regular_files_are_opened(tmp_path: Path) -> None:
    root = _tree(tmp_path)
    os.mkfifo(root / "usr/lib/fifo")
    (root / "usr/lib/to-fifo").symlink_to("fifo")
    tree = Tree(root)
    assert tree.kind("usr/lib/to-fifo") is FileType.FIFO
    for rel in ("usr/lib/fifo", "usr/lib/to-fifo", "usr/lib"):
        with pytest.raises(BootkitError, match="not a regular file"):
            _read(tree, rel)


def test_a_file_on_the_way_is_not_a_directory(tmp_path: Path) -> None:
    root = _tree(tmp_path)
    (root / "usr/lib/file").write_bytes(OWN)
    tree = Tree(root)
    assert tree.kind("usr/lib/file/x") is None
    assert tree.listdir("usr/lib/file") == []
    with pytest.raises(NotADirectoryError):
        _read(tree, "usr/lib/file/x")


def test_read_refuses_more_than_the_limit(tmp_path: Path) -> None:
    root = _tree(tmp_path)
    (root / "usr/lib/big").write_bytes(b"x" * 101)
    assert Tree(root).read("usr/lib/big", 101) == b"x" * 101
    with pytest.raises(BootkitError, match="larger than 100 bytes"):
        Tree(root).read("usr/lib/big", 100)


def test_real_dir_follows_no_symlink(tmp_path: Path, host_file: Path) -> None:
    root = _tree(tmp_path)
    (root / "etc").symlink_to(host_file.parent)
    (root / "var").write_bytes(b"")
    tree = Tree(root)
    assert tree.real_dir("usr/lib") is True
    assert tree.real_dir("usr/etc") is False
    with pytest.raises(BootkitError, match=r"/etc in .* is a symlink, not a directory"):
        tree.real_dir("etc")
    with pytest.raises(BootkitError, match=r"/etc in .* is a symlink"):
        tree.real_dir("etc/anything")
    with pytest.raises(BootkitError, match="is a regular file, not a directory"):
        tree.real_dir("var")


def test_copy_out_takes_the_file_that_was_checked(tmp_path: Path, host_file: Path) -> None:
    root = _tree(tmp_path)
    (root / "usr/lib/link").symlink_to(host_file)
    inside = _own_copy(root, host_file)
    Tree(root).copy_out("usr/lib/link", tmp_path / "out")
    assert (tmp_path / "out").read_bytes() == OWN
    assert not (tmp_path / "out").is_symlink()
    # On one filesystem it is a link to the tree's file, not a copy.
    assert (tmp_path / "out").stat().st_ino == inside.stat().st_ino


def test_mirror_holds_only_the_trees_own_files(tmp_path: Path, host_file: Path) -> None:
    root = _tree(tmp_path)
    mods = root / "usr/lib/modules/6.1"
    (mods / "kernel/fs").mkdir(parents=True)
    (mods / "kernel/fs/ext4.ko").write_bytes(b"ext4")
    (mods / "modules.order").write_bytes(b"kernel/fs/ext4.ko\n")
    (mods / "kernel/fs/jbd2.ko").symlink_to("/usr/lib/jbd2.ko")  # resolved in the tree
    (root / "usr/lib/jbd2.ko").write_bytes(b"jbd2")
    (mods / "kernel/fs/host.ko").symlink_to(host_file)  # not in the tree: left out
    (mods / "build").symlink_to(host_file.parent)  # a directory symlink: left out
    os.mkfifo(mods / "kernel/fifo")
    dest = tmp_path / "mirror"
    Tree(root).mirror("usr/lib/modules/6.1", dest)
    found = {
        str(p.relative_to(dest)): p.read_bytes() if p.is_file() else None
        for p in sorted(dest.rglob("*"))
    }
    assert found == {
        "kernel": None,
        "kernel/fs": None,
        "kernel/fs/ext4.ko": b"ext4",
        "kernel/fs/jbd2.ko": b"jbd2",
        "modules.order": b"kernel/fs/ext4.ko\n",
    }
    assert not any(p.is_symlink() for p in dest.rglob("*"))


def test_make_dirs_follows_symlinks_inside_the_tree(tmp_path: Path, host_file: Path) -> None:
    root = _tree(tmp_path)
    (root / "usr/lib/systemd").symlink_to(host_file.parent)
    # As in a chroot, a symlink to nothing is not made into a directory.
    with pytest.raises(FileExistsError):
        Tree(root).make_dirs("usr/lib/systemd/system")
    inside = _own_copy(root, host_file).parent
    made = Tree(root).make_dirs("usr/lib/systemd/system/basic.target.wants")
    assert made == inside / "system/basic.target.wants"
    assert made.is_dir()
    assert sorted(os.listdir(host_file.parent)) == ["secret"]
