"""Bootloader binaries on the ESP, at the path firmware boots without any EFI variable.

A disk image cannot rely on boot entries in NVRAM, so a bootloader backend that
can be installed puts its binary at the removable-media path `EFI/BOOT/BOOTX64.EFI`.
With a signing key, the installed binary is signed for Secure Boot (systemd's own
binary is not signed by the distribution, and bootkit builds GRUB's itself).
"""

from __future__ import annotations

from pathlib import Path

from bootkit.base.files import atomic_copy
from bootkit.secureboot.signing import Signer

REMOVABLE_PATH = Path("EFI/BOOT/BOOTX64.EFI")


def install_binary(binary: Path, dest: Path, signer: Signer | None) -> None:
    """Put `binary` at `dest` durably; signed with `signer` when given."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    if signer is None:
        atomic_copy(binary, dest)
    else:
        signer.sign(binary, dest)
