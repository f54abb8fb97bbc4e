"""Hostile trees: what a deploy reads stays inside the tree, and what it writes stays in
the deployment, whatever the image's symlinks and hardlinks say."""

from __future__ import annotations

import os
import shutil
import tarfile
from pathlib import Path

import pytest
from support.helpers import KVER, fails, init_sysroot, make_tree, ok, snapshot
from support.trees import deployed_sysroot, import_tree

from bootkit.boot.payloads import Payload
from bootkit.records.deployment import Deployment
from bootkit.sysroot.layout import Sysroot
from bootkit.sysroot.store import ObjectStore

SECRET = b"a host file that must never reach $BOOT\n"
OWN_KERNEL = b"the tree's own kernel\n"
OWN_INITRD = b"the tree's own initramfs\n"


@pytest.fixture
def deployed(tmp_path: Path) -> Path:
    """A sysroot with one deployment, whose state every refused deploy must leave alone."""
    return deployed_sysroot(tmp_path)


@pytest.fixture
def host(tmp_path: Path) -> Path:
    """A directory outside every tree, with a file in it."""
    path = tmp_path / "host"
    path.mkdir()
    (path / "secret").write_bytes(SECRET)
    return path


def _inside(tree: Path, host_path: Path) -> Path:
    """Where the tree itself has the host path's name."""
    return tree / str(host_path).lstrip("/")


def _newest(sysroot: Path) -> Deployment:
    sr = Sysroot(sysroot)
    return max(sr.deployments(), key=lambda d: d.serial)


def _payload(sysroot: Path) -> dict[str, bytes]:
    """The files of the newest deployment's payload on $BOOT."""
    sr = Sysroot(sysroot)
    dep = _newest(sysroot)
    directory = Payload(dep.os, dep.payload).dir(sr.boot_path)
    return {p.name: p.read_bytes() for p in directory.iterdir()}


def _nothing_of(sysroot: Path, data: bytes) -> None:
    boot = Sysroot(sysroot).boot_path
    assert not [p for p in boot.rglob("*") if p.is_file() and data in p.read_bytes()]


def _symlink(path: Path, target: Path | str) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.symlink_to(target)


def _kernel_in_boot(tree: Path) -> Path:
    """Debian's layout: boot/vmlinuz-<kver> and boot/initrd.img-<kver>."""
    shutil.rmtree(tree / "usr/lib/modules")
    (tree / "boot").mkdir()
    (tree / "boot" / f"vmlinuz-{KVER}").write_bytes(OWN_KERNEL)
    (tree / "boot" / f"initrd.img-{KVER}").write_bytes(OWN_INITRD)
    return tree


# --- reading: the kernel, the initramfs, os-release --------------------------------------

MODULES = f"usr/lib/modules/{KVER}"
# Each names a path of the tree that becomes an absolute symlink to the host; the tree
# has its own file under the same name, and that one is what a chroot would see.
KERNEL_LINKS = {
    "initramfs.img": (f"{MODULES}/initramfs.img", "secret", "initrd"),
    "boot/vmlinuz": (f"boot/vmlinuz-{KVER}", "secret", "linux"),
    "boot/initrd.img": (f"boot/initrd.img-{KVER}", "secret", "initrd"),
    "modules directory": (MODULES, "", "linux"),
}


@pytest.mark.parametrize("case", sorted(KERNEL_LINKS))
def test_absolute_symlinks_to_boot_files_resolve_inside_the_tree(
    deployed: Path, tmp_path: Path, host: Path, case: str
) -> None:
    rel, host_name, payload_file = KERNEL_LINKS[case]
    tree = make_tree(tmp_path / "evil", kernel=OWN_KERNEL, initrd=OWN_INITRD)
    if rel.startswith("boot/"):
        _kernel_in_boot(tree)
    if case == "modules directory":
        (host / "vmlinuz").write_bytes(SECRET)
        (host / "initramfs.img").write_bytes(SECRET)
        shutil.copytree(tree / rel, _inside(tree, host))
    else:
        own = (tree / rel).read_bytes()
        _inside(tree, host).mkdir(parents=True)
        _inside(tree, host / host_name).write_bytes(own)
    _symlink(tree / rel, host / host_name)
    ok("deploy", "--sysroot", deployed, tree)
    files = _payload(deployed)
    assert files[payload_file] == (OWN_INITRD if payload_file == "initrd" else OWN_KERNEL)
    assert files["initrd"] == OWN_INITRD
    _nothing_of(deployed, SECRET)


def test_a_boot_file_symlinked_to_nothing_in_the_tree_is_missing(
    deployed: Path, tmp_path: Path, host: Path
) -> None:
    tree = make_tree(tmp_path / "evil", initrd=None)
    (tree / MODULES / "initramfs.img").symlink_to(host / "secret")
    before = snapshot(deployed)
    line = fails("deploy", "--sysroot", deployed, "--initramfs", "tree", tree)
    assert "has no initramfs" in line, line
    assert snapshot(deployed) == before
    _nothing_of(deployed, SECRET)


def test_a_boot_file_symlinked_out_of_the_tree_is_refused(
    deployed: Path, tmp_path: Path, host: Path
) -> None:
    tree = make_tree(tmp_path / "evil", initrd=None)
    (tree / MODULES / "initramfs.img").symlink_to("../" * 12 + str(host / "secret").lstrip("/"))
    before = snapshot(deployed)
    line = fails("deploy", "--sysroot", deployed, tree)
    assert f"/{MODULES}/initramfs.img in " in line and "leads out of the tree" in line, line
    assert snapshot(deployed) == before


def test_a_symlinked_modules_directory_is_not_built_from(
    deployed: Path, tmp_path: Path, test_kernel: Path
) -> None:
    """The initramfs builder is given the tree's modules only, never the host's."""
    host_modules = next((test_kernel / "lib/modules").iterdir())
    kver = host_modules.name
    tree = make_tree(tmp_path / "evil", kver=kver, initrd=None)
    shutil.rmtree(tree / "usr/lib/modules")
    (tree / "boot").mkdir()
    (tree / "boot" / f"vmlinuz-{kver}").write_bytes(OWN_KERNEL)
    (tree / "lib").mkdir()
    (tree / "lib/modules").symlink_to(host_modules.parent)
    before = snapshot(deployed)
    line = fails("deploy", "--sysroot", deployed, "--initramfs", "build", tree)
    assert f"no modules for kernel {kver}" in line, line
    assert snapshot(deployed) == before


def test_os_release_is_read_through_symlinks_inside_the_tree(
    deployed: Path, tmp_path: Path, host: Path
) -> None:
    tree = make_tree(tmp_path / "relative")
    (tree / "usr/lib/os-release").rename(tree / "usr/share-os-release")
    _symlink(tree / "usr/etc/os-release", "../share-os-release")
    ok("deploy", "--sysroot", deployed, tree)
    assert _newest(deployed).title == "Test OS 1"

    tree = make_tree(tmp_path / "absolute")
    (tree / "usr/lib/os-release").unlink()
    (host / "os-release").write_text('PRETTY_NAME="The Host"\n')
    _inside(tree, host).mkdir(parents=True)
    _inside(tree, host / "os-release").write_text('PRETTY_NAME="The Tree"\n')
    _symlink(tree / "usr/etc/os-release", host / "os-release")
    ok("deploy", "--sysroot", deployed, tree)
    assert _newest(deployed).title == "The Tree"


def test_what_an_interrupted_deploy_left_in_tmp_is_removed(deployed: Path, tmp_path: Path) -> None:
    sr = Sysroot(deployed)
    kept = sr.tmp / "boot-files-1-deadbeef"
    kept.mkdir()
    obj = next(p for p in sr.objects.root.rglob("*") if p.is_file() and p.parent.name != "tmp")
    (kept / "vmlinuz").hardlink_to(obj)  # as a crash leaves it: keeping the object alive
    ok("deploy", "--sysroot", deployed, make_tree(tmp_path / "next", version="2"))
    assert list(sr.tmp.iterdir()) == []


def test_a_huge_os_release_is_refused(deployed: Path, tmp_path: Path) -> None:
    tree = make_tree(tmp_path / "evil")
    (tree / "usr/lib/os-release").write_bytes(b"PRETTY_NAME=x\n" + b"#" * (1 << 20))
    before = snapshot(deployed)
    line = fails("deploy", "--sysroot", deployed, tree)
    assert "/usr/lib/os-release in " in line and "larger than" in line, line
    assert snapshot(deployed) == before


# --- writing: nothing the image links leads a step out of the deployment -----------------


def _tar_of(tree: Path, out: Path, order: tuple[str, ...] | None = None) -> Path:
    """`tree` as a tar archive, its top-level names in `order` (default: sorted)."""
    with tarfile.open(out, "w", format=tarfile.PAX_FORMAT) as tf:
        for name in order or sorted(os.listdir(tree)):
            tf.add(tree / name, name)
    return out


@pytest.mark.parametrize("kind", ["directory", "tar"])
@pytest.mark.parametrize("link", ["usr", "usr/etc", "etc", "var"])
def test_symlinked_top_directories_are_refused(
    deployed: Path, tmp_path: Path, host: Path, kind: str, link: str
) -> None:
    tree = make_tree(tmp_path / "evil", files={"etc/hostname": "evil\n"})
    if link != "etc":
        shutil.rmtree(tree / "usr/etc")  # so that etc is the tree's /etc defaults
    _symlink(tree / link, host)
    source = tree if kind == "directory" else _tar_of(tree, tmp_path / "evil.tar")
    before, host_before = snapshot(deployed), snapshot(host)
    line = fails("deploy", "--sysroot", deployed, source)
    assert snapshot(host) == host_before
    assert snapshot(deployed) == before
    assert f"/{link} in " in line and "is a symlink, not a directory" in line, line


def _inodes(root: Path, under: str = "") -> dict[int, str]:
    start = root / under if under else root
    return {p.lstat().st_ino: str(p) for p in start.rglob("*") if p.is_file() and not p.is_symlink()}


def _no_link_into_usr(tree: Path, store: Path, *more: Path) -> None:
    """No file outside the tree's usr/ (nor in `more`) is a stored object or one of usr's."""
    shared = _inodes(store) | _inodes(tree, "usr")
    private: dict[int, str] = {}
    for top in sorted(os.listdir(tree)):
        if top != "usr":
            private |= _inodes(tree / top) if (tree / top).is_dir() else {}
    for directory in more:
        private |= _inodes(directory)
    assert not shared.keys() & private.keys(), [private[i] for i in shared.keys() & private.keys()]


# (a name, the earlier file it is a hardlink to, the order of the archive's top-level names)
CROSSING_LINKS = {
    "var to usr": ("var/lib/x", "usr/bin/hello", ("usr", "var")),
    "usr to var": ("usr/bin/hello", "var/lib/x", ("var", "usr")),
    "etc to usr": ("etc/x", "usr/bin/hello", ("var", "usr", "etc")),
    "boot to usr": (f"boot/vmlinuz-{KVER}", f"{MODULES}/vmlinuz", ("var", "usr", "boot")),
}


def _crossing_tree(tmp_path: Path, case: str) -> Path:
    """A tree with the case's hardlink, as an archive that names the target first."""
    name, target, order = CROSSING_LINKS[case]
    tree = make_tree(tmp_path / "evil")
    shutil.rmtree(tree / "usr/etc")
    (tree / "etc").mkdir()
    if not target.startswith("usr/"):
        (tree / "usr/bin/hello").unlink()
        (tree / target).write_bytes(b"#!/bin/sh\necho hello\n")
    (tree / name).parent.mkdir(parents=True, exist_ok=True)
    os.link(tree / target, tree / name)
    return _tar_of(tree, tmp_path / "evil.tar", order)


@pytest.mark.parametrize("case", sorted(CROSSING_LINKS))
def test_a_hardlink_across_the_store_boundary_becomes_a_copy(tmp_path: Path, case: str) -> None:
    store = ObjectStore(tmp_path / "objects")
    import_tree(_crossing_tree(tmp_path, case), tmp_path / "dest", store)
    _no_link_into_usr(tmp_path / "dest", store.root)
    # Links inside one area stay links.
    name, target, _ = CROSSING_LINKS[case]
    assert (tmp_path / "dest" / name).read_bytes() == (tmp_path / "dest" / target).read_bytes()


@pytest.mark.parametrize("case", ["var to usr", "usr to var"])
def test_writing_the_shared_var_never_reaches_a_deployment(tmp_path: Path, case: str) -> None:
    sr = init_sysroot(tmp_path / "sys")
    ok("deploy", "--sysroot", sr.path, _crossing_tree(tmp_path, case))
    shared_var = sr.stateroot("test") / "var"
    _no_link_into_usr(sr.tree(_newest(sr.path)), sr.objects.root, shared_var)
    (shared_var / "lib/x").write_bytes(b"changed through /var\n")
    ok("deploy", "--sysroot", sr.path, make_tree(tmp_path / "clean"))
    for dep in sr.deployments():
        assert (sr.tree(dep) / "usr/bin/hello").read_bytes() == b"#!/bin/sh\necho hello\n"


def test_a_directory_source_never_links_outside_usr_to_the_store(tmp_path: Path) -> None:
    sr = init_sysroot(tmp_path / "sys")
    tree = make_tree(tmp_path / "tree")
    (tree / "var/lib/x").hardlink_to(tree / "usr/bin/hello")
    (tree / "boot").mkdir()
    (tree / "boot/hello").hardlink_to(tree / "usr/bin/hello")
    ok("deploy", "--sysroot", sr.path, tree)
    _no_link_into_usr(sr.tree(_newest(sr.path)), sr.objects.root, sr.stateroot("test") / "var")


@pytest.mark.parametrize("kind", ["directory", "tar"])
def test_etc_beside_usr_etc_is_refused_with_the_files_in_the_way(
    deployed: Path, tmp_path: Path, kind: str
) -> None:
    tree = make_tree(tmp_path / "evil", files={"etc/hostname": "x\n", "etc/ssh/sshd_config": ""})
    source = tree if kind == "directory" else _tar_of(tree, tmp_path / "evil.tar")
    before = snapshot(deployed)
    line = fails("deploy", "--sysroot", deployed, source)
    assert "both etc and usr/etc" in line and "etc/hostname, etc/ssh/sshd_config" in line, line
    assert snapshot(deployed) == before
