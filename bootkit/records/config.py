"""A sysroot's recorded configuration (`/bootkit/config.json`): what `bootkit init` decided."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, replace
from enum import StrEnum
from pathlib import Path, PurePosixPath
from typing import Any

from bootkit.base.files import atomic_write
from bootkit.contract import check_name
from bootkit.errors import BootkitError
from bootkit.formats import bootvalues
from bootkit.records.jsonfields import typed_fields


class Bootloader(StrEnum):
    """Which bootloader reads the boot entries bootkit writes on $BOOT."""

    SYSTEMD_BOOT = "systemd-boot"
    GRUB = "grub"
    # BLS entries only, for a bootloader set up by other means (kernel-install style).
    NONE = "none"

    @classmethod
    def parse(cls, name: str) -> Bootloader:
        try:
            return cls(name)
        except ValueError:
            raise BootkitError(
                f"unknown bootloader {name!r}", hint=f"use one of {', '.join(cls)}"
            ) from None


# How often a new entry is tried before the bootloader falls back to the previous one.
DEFAULT_TRIES = 3


@dataclass(frozen=True)
class SysrootConfig:
    os: str
    bootloader: Bootloader  # stored in config.json as its name
    boot_dir: str = "/efi"
    root_arg: str = "root=LABEL=bootkit-root"
    timeout: int = 3
    tries: int = DEFAULT_TRIES  # boot counting (see bootkit.boot.counting); 0 means off
    uki: bool = False
    signing_key: str | None = None
    signing_cert: str | None = None
    # Decrypts an encrypted key; without it BOOTKIT_KEY_PASSPHRASE does.
    signing_passphrase_file: str | None = None
    # Signs each UKI's PCR 11 policy (.pcrsig); the public half goes in as .pcrpkey.
    pcr_key: str | None = None
    pcr_cert: str | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.os, str):
            raise BootkitError(f"invalid os name {self.os!r}")
        check_name(self.os, "os")
        # A plain name (from config.json, or a caller) becomes the enum member.
        object.__setattr__(self, "bootloader", Bootloader.parse(self.bootloader))
        check_boot_dir(self.boot_dir)
        _check_root_arg(self.root_arg)
        bootvalues.check_timeout(self.timeout)
        bootvalues.check_tries(self.tries)
        if not isinstance(self.uki, bool):
            raise BootkitError(f"the UKI setting must be true or false, not {self.uki!r}")
        for name in ("signing_key", "signing_cert", "signing_passphrase_file", "pcr_key",
                     "pcr_cert"):
            value = getattr(self, name)
            if value is not None:
                bootvalues.check_text(value, name.replace("_", " "), 4096)

    def with_changes(self, **changes: Any) -> SysrootConfig:
        return replace(self, **changes)

    def save(self, path: Path) -> None:
        atomic_write(path, json.dumps(asdict(self), indent=2) + "\n")

    @classmethod
    def load(cls, path: Path) -> SysrootConfig:
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            raise BootkitError(
                f"{path.parent.parent} is not a bootkit sysroot (no {path.name})",
                hint="run 'bootkit init' first, or name the sysroot that holds /bootkit",
            ) from None
        except (OSError, ValueError) as err:
            raise BootkitError(
                f"cannot read {path}: {err}", hint="restore it, or run 'bootkit init' again, forced"
            ) from None
        hint = "correct it, or run 'bootkit init' again, forced"
        values = typed_fields(cls, data, path, hint)
        if not {"os", "bootloader"} <= values.keys():
            raise BootkitError(f"{path}: missing 'os' or 'bootloader'", hint=hint)
        try:
            return cls(**values)
        except BootkitError as err:
            raise BootkitError(f"{path}: {err.message}", hint=hint) from None


def check_boot_dir(boot_dir: object) -> None:
    """Where $BOOT is mounted: an absolute path that stays inside the sysroot."""
    bootvalues.check_text(boot_dir, "boot directory", 4096)
    assert isinstance(boot_dir, str)
    parts = PurePosixPath(boot_dir).parts
    if not boot_dir.startswith("/") or ".." in parts:
        raise BootkitError(
            f"boot directory must be an absolute path inside the sysroot, not {boot_dir!r}",
            hint="for example /efi or /boot",
        )
    # $BOOT/bootkit holds kernels that cleanup removes: it must not be the sysroot's
    # own /bootkit, nor hold it, nor be inside it.
    if len(parts) < 2 or parts[1] == "bootkit":
        raise BootkitError(
            f"boot directory {boot_dir!r} would share bootkit's records on the sysroot",
            hint="give the directory $BOOT is mounted on, for example /efi or /boot",
        )


def _check_root_arg(root_arg: object) -> None:
    """The kernel argument that finds the physical root: one argument, root=..."""
    if not isinstance(root_arg, str) or not root_arg.startswith("root="):
        raise BootkitError(
            f"root argument must start with 'root=', not {root_arg!r}",
            hint="for example root=LABEL=bootkit-root or root=UUID=...",
        )
    bootvalues.check_kernel_argument(root_arg, "root argument")
