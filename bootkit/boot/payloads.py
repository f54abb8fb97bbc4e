"""Kernels and initramfs images on $BOOT, content-addressed and shared between deployments.

`$BOOT/bootkit/<os>/<kver>-<sha256 prefix>/{linux,initrd}`: the name changes whenever
the content does, so a payload is written once under a new name and never rewritten.
A deployment booted as a Unified Kernel Image has `<kver>-<sha256 prefix>/uki.efi`
instead; its command line names the deployment, so such a payload is never shared.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from bootkit.base.files import atomic_copy, atomic_copy_into, fsync_dir, remove_path, remove_tree
from bootkit.contract import is_valid_name
from bootkit.errors import BootkitError
from bootkit.formats import grubscript

log = logging.getLogger("bootkit")

PAYLOAD_ROOT = "bootkit"
# Room kept for entries, the GRUB slot file and FAT's own allocation rounding.
SLACK_BYTES = 1 << 20
UKI_FILE = "uki.efi"
# The GRUB slot files and grubenv share the payload root.
_NOT_PAYLOADS = {PurePosixPath(grubscript.SLOT_DIR).name}
# `<kver>-<12 hex digits of the content's sha256>`, as `payload_name` makes it.
_PAYLOAD_NAME = re.compile(r"[0-9][A-Za-z0-9._+-]*-[0-9a-f]{12}")


@dataclass(frozen=True)
class Payload:
    os: str
    name: str  # "<kver>-<hash>"

    def rel(self, filename: str) -> str:
        """Path of one of its files as the bootloader sees it, from $BOOT's root."""
        return f"/{PAYLOAD_ROOT}/{self.os}/{self.name}/{filename}"

    def dir(self, boot: Path) -> Path:
        return boot / PAYLOAD_ROOT / self.os / self.name


def file_digest(path: Path) -> str:
    """The SHA-256 of a file's content, in hex."""
    with open(path, "rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()


def name_for(kver: str, digests: Iterable[str]) -> str:
    """A payload's directory name: the kernel version and a prefix of a hash over
    its files' digests, in the order the files are given."""
    h = hashlib.sha256()
    for digest in digests:
        h.update(bytes.fromhex(digest))
    return f"{kver}-{h.hexdigest()[:12]}"


def payload_name(kver: str, files: list[Path]) -> str:
    return name_for(kver, (file_digest(f) for f in files))


def expected_files(uki: bool) -> tuple[str, ...]:
    """The files a payload holds, in the order its name hashes them."""
    return (UKI_FILE,) if uki else ("linux", "initrd")


def missing_files(boot: Path, payload: Payload, names: Iterable[str]) -> list[str]:
    """Which of the files `names` the payload's directory on $BOOT lacks."""
    folder = payload.dir(boot)
    return [n for n in names if not folder.joinpath(n).is_file()]


def damaged_files(boot: Path, payload: Payload, digests: Mapping[str, str]) -> list[str]:
    """Which of the payload's files are missing or differ from `digests` (name -> sha256)."""
    folder = payload.dir(boot)
    out = []
    for name, digest in digests.items():
        path = folder / name
        if not path.is_file() or file_digest(path) != digest:
            out.append(name)
    return out


def free_bytes(path: Path) -> int:
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


def install(
    boot: Path,
    payload: Payload,
    files: Mapping[str, Path],
    digests: Mapping[str, str],
    *,
    reclaimable: int = 0,
) -> bool:
    """Copy `files` ({"linux": ..., "initrd": ...} or {"uki.efi": ...}, with their
    `digests`) to the payload's directory; False if it was there already.

    A directory of that name with a file missing or changed is copied afresh: its
    name says what it must hold, so the copy is right for every deployment that
    uses it. Checks free space first, so a full $BOOT fails before anything is written.
    """
    final = payload.dir(boot)
    if final.is_dir():
        # A file more than the payload needs is left alone: entries may boot from this
        # directory, so it is only replaced when what they read is missing or damaged.
        if set(files) <= set(_names_in(final)) and not damaged_files(boot, payload, digests):
            return False
        log.warning("the boot files in %s are incomplete or damaged; copying them again", final)
        replace(boot, payload, files, reclaimable=reclaimable)
        return False
    _copy(boot, payload, files, reclaimable)
    return True


def replace(
    boot: Path, payload: Payload, files: Mapping[str, Path], *, reclaimable: int = 0
) -> None:
    """Copy `files` afresh into the payload's directory, whatever it holds now.

    Not atomic: a crash can leave the directory missing. Only for a payload that
    is damaged, so that no entry of it boots anyway.
    """
    remove_tree(payload.dir(boot))
    _copy(boot, payload, files, reclaimable)


def _names_in(folder: Path) -> list[str]:
    return [p.name for p in folder.iterdir() if not p.name.startswith(".")]


def _copy(boot: Path, payload: Payload, files: Mapping[str, Path], reclaimable: int) -> None:
    final = payload.dir(boot)
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


def restore(boot: Path, payload: Payload, files: Mapping[str, Path]) -> None:
    """Copy `files` into the payload's directory, each replacing what is there (a file
    that is missing or damaged, so nothing boots from it now)."""
    folder = payload.dir(boot)
    folder.mkdir(parents=True, exist_ok=True)
    need = sum(p.stat().st_size for p in files.values()) + SLACK_BYTES
    have = free_bytes(folder)
    if need > have:
        raise BootkitError(
            f"not enough space on {boot} to copy {', '.join(files)} of {payload.name} again",
            hint="remove old deployments with 'bootkit cleanup', then try again",
        )
    for name, src in files.items():
        atomic_copy(src, folder / name)


def present(boot: Path) -> dict[Payload, int]:
    """Every payload on $BOOT with its size in bytes."""
    out: dict[Payload, int] = {}
    root = boot / PAYLOAD_ROOT
    if not root.is_dir():
        return out
    for osdir in root.iterdir():
        if osdir.name in _NOT_PAYLOADS or not is_valid_name(osdir.name) or not osdir.is_dir():
            continue
        for d in osdir.iterdir():
            # Only what bootkit names a payload: cleanup removes what no entry uses.
            if _PAYLOAD_NAME.fullmatch(d.name) and d.is_dir() and not d.is_symlink():
                out[Payload(osdir.name, d.name)] = sum(f.stat().st_size for f in d.iterdir())
    return out


def remove_unreferenced(boot: Path, referenced: set[Payload]) -> list[Payload]:
    removed: list[Payload] = []
    for p in present(boot):
        if p not in referenced:
            remove_tree(p.dir(boot))
            removed.append(p)
    # The directories the removals changed, so that they stay removed after a power cut.
    for osdir in dict.fromkeys(p.dir(boot).parent for p in removed):
        fsync_dir(osdir)
    root = boot / PAYLOAD_ROOT
    if root.is_dir():
        for osdir in root.iterdir():
            for stray in osdir.glob(".*.bootkit-tmp"):
                with contextlib.suppress(OSError):  # tidying only; the next command retries
                    remove_path(stray)
    return removed
