"""Bootloader binaries on the ESP, at the path firmware boots without any EFI variable.

A disk image cannot rely on boot entries in NVRAM, so the bootloader goes to the
removable-media path `EFI/BOOT/BOOTX64.EFI`. For systemd-boot that is a copy of
the distribution's signed-or-not binary. For GRUB it is an image made with
`grub-mkimage` around a small embedded config: find the ESP by the stub
`grub/grub.cfg` bootkit keeps there, talk over the serial port as well as the
screen, and read that stub. With a signing key, the installed binary is signed for
Secure Boot (systemd's own binary is not signed by the distribution).
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from bootkit.base.files import atomic_copy
from bootkit.base.process import run
from bootkit.errors import BootkitError
from bootkit.secureboot.signing import Signer

REMOVABLE_PATH = Path("EFI/BOOT/BOOTX64.EFI")
SYSTEMD_BOOT_EFI = Path("/usr/lib/systemd/boot/efi/systemd-bootx64.efi")
GRUB_MODULE_DIR = Path("/usr/lib/grub/x86_64-efi")

# What the bootkit GRUB config uses, plus what a person at the GRUB prompt needs.
GRUB_MODULES = (
    "part_gpt", "part_msdos", "fat", "ext2", "normal", "configfile", "linux", "boot",
    "search", "search_fs_file", "search_fs_uuid", "search_label", "test", "true",
    "echo", "loadenv", "cat", "ls", "reboot", "halt", "all_video", "gfxterm",
    "serial", "terminal", "terminfo", "efi_gop", "sleep", "regexp", "gzio", "minicmd",
    "chain",  # `chainloader`, for deployments booted as Unified Kernel Images
)

GRUB_EARLY_CONFIG = """\
serial --unit=0 --speed=115200
terminal_input serial console
terminal_output serial console
search --no-floppy --set=root --file /grub/grub.cfg
set prefix=($root)/grub
configfile /grub/grub.cfg
"""

BOOTLOADERS = ("systemd-boot", "grub")


def install_systemd_boot(esp: Path, binary: Path = SYSTEMD_BOOT_EFI,
                         signer: Signer | None = None) -> None:
    if not binary.is_file():
        raise BootkitError(
            f"systemd-boot is not installed ({binary} is missing)",
            hint="install the package systemd-boot-efi",
        )
    for dest in (esp / REMOVABLE_PATH, esp / "EFI/systemd/systemd-bootx64.efi"):
        dest.parent.mkdir(parents=True, exist_ok=True)
        if signer is None:
            atomic_copy(binary, dest)
        else:
            signer.sign(binary, dest)


def build_grub_image(output: Path, module_dir: Path = GRUB_MODULE_DIR) -> None:
    """Make a standalone GRUB EFI binary that reads the bootkit stub on the ESP."""
    if not (module_dir / "linux.mod").is_file():
        raise BootkitError(
            f"GRUB for x86_64-efi is not installed ({module_dir} is missing)",
            hint="install the package grub-efi-amd64-bin",
        )
    modules = [m for m in GRUB_MODULES if (module_dir / f"{m}.mod").is_file()]
    with tempfile.TemporaryDirectory(prefix="bootkit-grub-") as tmp:
        config = Path(tmp) / "early.cfg"
        config.write_text(GRUB_EARLY_CONFIG)
        run(
            [
                "grub-mkimage",
                "-O", "x86_64-efi",
                "-d", str(module_dir),
                "-p", "/grub",
                "-c", str(config),
                "-o", str(output),
                *modules,
            ],
            "building the GRUB EFI image",
        )


def install_grub(esp: Path, signer: Signer | None = None) -> None:
    dest = esp / REMOVABLE_PATH
    dest.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="bootkit-grub-") as tmp:
        built = Path(tmp) / "grubx64.efi"
        build_grub_image(built)
        if signer is None:
            atomic_copy(built, dest)
        else:
            signer.sign(built, dest)


def install_bootloader(esp: Path, bootloader: str, signer: Signer | None = None) -> None:
    """Put `bootloader` at the ESP's removable-media path (ESP content staged in `esp`),
    signed with `signer` when given."""
    if bootloader == "systemd-boot":
        install_systemd_boot(esp, signer=signer)
    elif bootloader == "grub":
        install_grub(esp, signer)
    else:
        raise BootkitError(
            f"cannot install bootloader {bootloader!r} on an ESP",
            hint=f"use one of {', '.join(BOOTLOADERS)}",
        )
