"""No bootloader of bootkit's own: the BLS entries are all it writes on $BOOT.

For machines whose bootloader is set up by other means and reads Type #1 entries
(kernel-install style setups); bootkit keeps no file beside the entries and has no
binary to install.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from bootkit.boot.backends import Generation, MenuFiles, StagedMenu, installable
from bootkit.boot.counting import Counter
from bootkit.errors import BootkitError
from bootkit.records.config import Bootloader, SysrootConfig
from bootkit.records.deployment import Deployment
from bootkit.secureboot.signing import Signer


class NoBootloader:
    bootloader = Bootloader.NONE
    atomic_switch = False
    installable = False

    def read_menu(self, boot: Path) -> MenuFiles:
        return MenuFiles()

    def stage_menu(self, boot: Path, new: Generation, before: MenuFiles) -> StagedMenu:
        return StagedMenu()

    def is_current(self, menu: MenuFiles, generation: int) -> bool:
        return True

    def holds(self, boot: Path, new: Generation, menu: MenuFiles) -> bool:
        return True

    def count_tries(self, boot: Path, counters: Mapping[str, Counter]) -> dict[str, Counter]:
        return dict(counters)

    def mark_good(self, boot: Path, dep: Deployment) -> list[str]:
        return []

    def write_static(self, boot: Path, config: SysrootConfig) -> None:
        return None

    def install(self, esp: Path, signer: Signer | None) -> Path:
        choices = " or ".join(installable())
        raise BootkitError(
            f"the sysroot's bootloader is {self.bootloader}: nothing to install, bootkit "
            "only writes boot entries for a bootloader set up by other means",
            hint=f"configure the sysroot for {choices} to have bootkit install one",
        )


BACKEND = NoBootloader()
