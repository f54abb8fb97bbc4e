"""Kernels and initramfs images on $BOOT, content-addressed and shared between deployments.

`$BOOT/bootkit/<os>/<kver>-<sha256 prefix>/{linux,initrd}`: the name changes whenever
the content does, so a payload is written once under a new name and never rewritten.
A deployment booted as a Unified Kernel Image has `<kver>-<sha256 prefix>/uki.efi`
instead; its command line names the deployment, so such a payload is never shared.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from bootkit.base.files import atomic_copy_into, fsync_dir, remove_path, remove_tree
from bootkit.errors import BootkitError
from bootkit.formats import grubscript

PAYLOAD_ROOT = "bootkit"
# Room kept for entries, the GRUB slot file and FAT's own allocation rounding.
SLACK_BYTES = 1 << 20
UKI_FILE = "uki.efi"
# The GRUB slot files and grubenv share the payload root.
_NOT_PAYLOADS = {PurePosixPath(grubscript.SLOT_DIR).name}


@dataclass(frozen=True)
class Payload:
    os: str
    name: str  # "<kver>-<hash>"

    def rel(self, filename: str) -> str:
        """Path of one of its files as the bootloader sees it, from $BOOT's root."""
        return f"/{PAYLOAD_ROOT}/{self.os}/{self.name}/{filename}"

    def dir(self, boot: Path) -> Path:
        return boot / PAYLOAD_ROOT / self.os / self.name


def payload_name(kver: str, files: list[Path]) -> str:
    h = hashlib.sha256()
    for f in files:
        with open(f, "rb") as fh:
            h.update(hashlib.file_digest(fh, "sha256").digest())
    return f"{kver}-{h.hexdigest()[:12]}"


def free_bytes(path: Path) -> int:
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


def install(
    boot: Path, payload: Payload, files: Mapping[str, Path], *, reclaimable: int = 0
) -> bool:
    """Copy `files` ({"linux": ..., "initrd": ...} or {"uki.efi": ...}) to the payload's
    directory; False if it is there already.

    Checks free space first, so a full $BOOT fails before anything is written.
    """
    final = payload.dir(boot)
    if final.is_dir():
        return False
    need = sum(p.stat().st_size for p in files.values()) + SLACK_BYTES
    final.parent.mkdir(parents=True, exist_ok=True)
    have = free_bytes(final.parent)
    if need > have:
        mib = 1 << 20
        hint = "remove old deployments with 'bootkit cleanup'"
        if reclaimable:
            hint = f"'bootkit cleanup' would free about {reclaimable / mib:.1f} MiB"
        raise BootkitError(
            f"not enough space on {boot}: the kernel and initramfs need {need / mib:.1f} MiB, "
            f"{have / mib:.1f} MiB free",
            hint=hint,
        )
    atomic_copy_into(final, files)
    return True


def present(boot: Path) -> dict[Payload, int]:
    """Every payload on $BOOT with its size in bytes."""
    out: dict[Payload, int] = {}
    root = boot / PAYLOAD_ROOT
    if not root.is_dir():
        return out
    for osdir in root.iterdir():
        if not osdir.is_dir() or osdir.name in _NOT_PAYLOADS:
            continue
        for d in osdir.iterdir():
            if d.is_dir() and not d.name.startswith("."):
                out[Payload(osdir.name, d.name)] = sum(f.stat().st_size for f in d.iterdir())
    return out


def remove_unreferenced(boot: Path, referenced: set[Payload]) -> list[Payload]:
    removed: list[Payload] = []
    for p in present(boot):
        if p not in referenced:
            remove_tree(p.dir(boot))
            removed.append(p)
    root = boot / PAYLOAD_ROOT
    if root.is_dir():
        for osdir in root.iterdir():
            for stray in osdir.glob(".*.bootkit-tmp"):
                with contextlib.suppress(OSError):  # tidying only; the next command retries
                    remove_path(stray)
    if removed:
        fsync_dir(root)
    return removed
