"""Finding a tree's kernel and initramfs, in the places distributions put them."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from bootkit.errors import BootkitError
from bootkit.formats.versioncmp import version_key


@dataclass(frozen=True)
class TreeKernel:
    version: str
    linux: Path
    initramfs: Path | None
    modules_dir: Path | None


def find_kernel(tree: Path) -> TreeKernel:
    """The newest kernel in `tree`, preferring `usr/lib/modules/<kver>/vmlinuz`."""
    found: dict[str, TreeKernel] = {}
    modules_root = tree / "usr/lib/modules"
    if modules_root.is_dir():
        for d in modules_root.iterdir():
            vmlinuz = d / "vmlinuz"
            if vmlinuz.is_file() and not vmlinuz.is_symlink():
                image = d / "initramfs.img"
                found[d.name] = TreeKernel(d.name, vmlinuz, image if image.is_file() else None, d)
    boot = tree / "boot"
    if not found and boot.is_dir() and not boot.is_symlink():
        for vmlinuz in boot.glob("vmlinuz-*"):
            if not vmlinuz.is_file():
                continue
            kver = vmlinuz.name.removeprefix("vmlinuz-")
            initrd: Path | None = next(
                (
                    p
                    for p in (boot / f"initrd.img-{kver}", boot / f"initramfs-{kver}.img")
                    if p.is_file()
                ),
                None,
            )
            mods = next(
                (
                    p
                    for p in (tree / "usr/lib/modules" / kver, tree / "lib/modules" / kver)
                    if p.is_dir()
                ),
                None,
            )
            found[kver] = TreeKernel(kver, vmlinuz, initrd, mods)
    if not found:
        raise BootkitError(
            "the source tree has no kernel",
            hint="put it at usr/lib/modules/<kver>/vmlinuz (with initramfs.img beside it) "
            "or boot/vmlinuz-<kver>",
        )
    return found[max(found, key=version_key)]


def os_release_path(tree: Path) -> Path | None:
    """The tree's os-release file; symlinks are skipped, as they may point out of the tree."""
    for rel in ("usr/lib/os-release", "etc/os-release", "usr/etc/os-release"):
        p = tree / rel
        if not p.is_symlink() and p.is_file():
            return p
    return None


def read_os_release(tree: Path) -> dict[str, str]:
    p = os_release_path(tree)
    if p is not None:
        out: dict[str, str] = {}
        for line in p.read_text(errors="replace").splitlines():
            key, sep, value = line.partition("=")
            if sep and key.strip() and not key.startswith("#"):
                value = value.strip()
                if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
                    value = value[1:-1]
                out[key.strip()] = value
        return out
    return {}
