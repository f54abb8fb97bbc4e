"""Finding a tree's kernel and initramfs, in the places distributions put them.

Every path is looked up in the tree as if it were the root (see `bootkit.base.confined`):
a symlinked kernel, initramfs or modules directory is followed inside the tree, never
out of it, and what is found is named by its path with every symlink resolved.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from bootkit.base.confined import Tree
from bootkit.base.filetypes import FileType
from bootkit.errors import BootkitError
from bootkit.formats.versioncmp import version_key

MODULES = "usr/lib/modules"
# Where os-release may be, in the order it is read.
OS_RELEASE = ("usr/lib/os-release", "etc/os-release", "usr/etc/os-release")
# os-release is a few hundred bytes everywhere; a larger one is not read into memory.
OS_RELEASE_LIMIT = 64 << 10


@dataclass(frozen=True)
class TreeKernel:
    """A kernel found in `tree`; each path is below `tree` with every symlink resolved
    inside it, and is opened through `bootkit.base.confined.Tree` all the same."""

    version: str
    linux: Path
    initramfs: Path | None
    modules_dir: Path | None


# Strict: a boot file that leads out of the tree is refused by name, not passed over.
def _file(tree: Tree, *candidates: str) -> Path | None:
    return next((tree.path(c) for c in candidates if tree.kind(c, strict=True) is FileType.FILE),
                None)


def _dir(tree: Tree, *candidates: str) -> Path | None:
    return next((tree.path(c) for c in candidates if tree.kind(c, strict=True) is FileType.DIR),
                None)


def _kernels(tree: Tree) -> dict[str, TreeKernel]:
    """`usr/lib/modules/<kver>/vmlinuz`, with `initramfs.img` beside it (Fedora, Arch)."""
    found: dict[str, TreeKernel] = {}
    for kver in tree.listdir(MODULES):
        mods = f"{MODULES}/{kver}"
        linux = _file(tree, f"{mods}/vmlinuz")
        if linux is not None:
            found[kver] = TreeKernel(kver, linux, _file(tree, f"{mods}/initramfs.img"),
                                     _dir(tree, mods))
    return found


def _boot_kernels(tree: Tree) -> dict[str, TreeKernel]:
    """`boot/vmlinuz-<kver>`, with `boot/initrd.img-<kver>` (Debian) or
    `boot/initramfs-<kver>.img`, and the modules in `usr/lib` or `lib`."""
    found: dict[str, TreeKernel] = {}
    for name in tree.listdir("boot"):
        kver = name.removeprefix("vmlinuz-")
        linux = _file(tree, f"boot/{name}") if name.startswith("vmlinuz-") and kver else None
        if linux is not None:
            initrd = _file(tree, f"boot/initrd.img-{kver}", f"boot/initramfs-{kver}.img")
            found[kver] = TreeKernel(kver, linux, initrd,
                                     _dir(tree, f"{MODULES}/{kver}", f"lib/modules/{kver}"))
    return found


def find_kernel(root: Path) -> TreeKernel:
    """The newest kernel in the tree at `root`, preferring `usr/lib/modules/<kver>/vmlinuz`."""
    tree = Tree(root)
    found = _kernels(tree) or _boot_kernels(tree)
    if not found:
        raise BootkitError(
            "the source tree has no kernel",
            hint="put it at usr/lib/modules/<kver>/vmlinuz (with initramfs.img beside it) "
            "or boot/vmlinuz-<kver>",
        )
    return found[max(found, key=version_key)]


def os_release_data(root: Path) -> bytes | None:
    """The content of the tree's os-release file, if it has one."""
    tree = Tree(root)
    rel = next((rel for rel in OS_RELEASE if tree.kind(rel, strict=True) is FileType.FILE), None)
    return tree.read(rel, OS_RELEASE_LIMIT) if rel is not None else None


def read_os_release(root: Path) -> dict[str, str]:
    """The tree's os-release as keys and values; empty if it has none."""
    data = os_release_data(root)
    out: dict[str, str] = {}
    for line in (data or b"").decode(errors="replace").splitlines():
        key, sep, value = line.partition("=")
        if sep and key.strip() and not key.startswith("#"):
            value = value.strip()
            if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
                value = value[1:-1]
            out[key.strip()] = value
    return out
