"""systemd-boot: it reads the BLS entries natively and counts boots in their names.

Its only file of its own is `loader/loader.conf` (timeout, default); the menu is the
entries themselves, so a switch shows them one rename at a time, default first.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from bootkit.boot.backends import Generation, MenuFiles, StagedMenu, write_if_changed
from bootkit.boot.counting import Counter
from bootkit.boot.esp import REMOVABLE_PATH, install_binary
from bootkit.errors import BootkitError
from bootkit.records.config import Bootloader, SysrootConfig
from bootkit.records.deployment import Deployment
from bootkit.secureboot.signing import Signer

LOADER_CONF = "loader/loader.conf"
SYSTEMD_BOOT_EFI = Path("/usr/lib/systemd/boot/efi/systemd-bootx64.efi")
# Where `bootctl install` puts it too, for firmware boot entries that name it.
VENDOR_PATH = Path("EFI/systemd/systemd-bootx64.efi")


def loader_conf(cfg: SysrootConfig) -> str:
    # No fixed default: systemd-boot boots the first entry, and bootkit's entry names
    # put the default first. The pattern keeps entries of other systems from winning.
    return f"timeout {cfg.timeout}\ndefault bootkit-*\n"


class SystemdBoot:
    bootloader = Bootloader.SYSTEMD_BOOT
    atomic_switch = False
    installable = True

    def read_menu(self, boot: Path) -> MenuFiles:
        return MenuFiles()  # the entries are its menu

    def stage_menu(self, boot: Path, new: Generation, before: MenuFiles) -> StagedMenu:
        return StagedMenu()

    def is_current(self, menu: MenuFiles, generation: int) -> bool:
        return True

    def holds(self, boot: Path, new: Generation, menu: MenuFiles) -> bool:
        return True  # the entries are its menu

    def count_tries(self, boot: Path, counters: Mapping[str, Counter]) -> dict[str, Counter]:
        return dict(counters)  # it renames the entries as it counts

    def mark_good(self, boot: Path, dep: Deployment) -> list[str]:
        return []  # the entry's rename is all there is

    def write_static(self, boot: Path, config: SysrootConfig) -> None:
        write_if_changed(boot / LOADER_CONF, loader_conf(config))

    def install(self, esp: Path, signer: Signer | None) -> Path:
        binary = SYSTEMD_BOOT_EFI
        if not binary.is_file():
            raise BootkitError(
                f"systemd-boot is not installed ({binary} is missing)",
                hint="install the package systemd-boot-efi",
            )
        for dest in (esp / REMOVABLE_PATH, esp / VENDOR_PATH):
            install_binary(binary, dest, signer)
        return esp / REMOVABLE_PATH


BACKEND = SystemdBoot()
