"""Bootloader backends: where the menu goes besides the BLS entries every backend shares.

The generic switch (`bootkit.boot.switch`) writes the entries and calls the sysroot's
backend at fixed points: it stages the backend's own menu files for the new
generation under temporary names before the one sync, renames them into place right
after the entries, and removes the old generation's files after the old entries.
A backend also reads its files back, folds its own boot counters into the ones the
entry names carry, clears them when a boot is marked good, keeps its static files
(loader.conf, the GRUB stub) and installs its binary on an ESP.

Adding a bootloader is a member of `Bootloader` plus one module here.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from bootkit.base.files import atomic_write
from bootkit.boot.counting import Counter
from bootkit.records.config import Bootloader, SysrootConfig
from bootkit.records.deployment import Deployment
from bootkit.secureboot.signing import Signer


@dataclass(frozen=True)
class Generation:
    """The menu a switch writes: `deployments` (default first) as generation `number`."""

    config: SysrootConfig
    deployments: Sequence[Deployment]
    number: int
    counters: Mapping[str, Counter]  # by deployment ref

    def counter(self, dep: Deployment) -> Counter:
        return self.counters.get(dep.ref, Counter())


@dataclass(frozen=True)
class MenuFiles:
    """A backend's own menu files on $BOOT."""

    texts: Mapping[Path, str] = field(default_factory=dict)
    stray: tuple[Path, ...] = ()  # temp files left by an interrupted write
    generation: int | None = None  # the generation its menu carries, if it carries one


@dataclass(frozen=True)
class StagedMenu:
    """A backend's files of a new generation, written under temporary names, not synced."""

    renames: tuple[tuple[Path, Path], ...] = ()  # (temporary, final), in the order shown
    obsolete: tuple[Path, ...] = ()  # what the old generation leaves, removed last


class Backend(Protocol):
    """One bootloader's part of $BOOT."""

    @property
    def bootloader(self) -> Bootloader: ...

    @property
    def atomic_switch(self) -> bool:
        """Whether its menu changes in one rename (else entry by entry, default first)."""

    @property
    def installable(self) -> bool:
        """Whether it has a binary to install on an ESP."""

    def read_menu(self, boot: Path) -> MenuFiles:
        """Its menu files on $BOOT, and temp files an interrupted write left there."""

    def stage_menu(self, boot: Path, new: Generation, before: MenuFiles) -> StagedMenu:
        """Write its files of `new` under temporary names, unsynced; what to show and drop.

        Called after the entries are staged and before the one sync; anything it
        changes in place must leave the old generation's menu working.
        """

    def is_current(self, menu: MenuFiles, generation: int) -> bool:
        """Whether its files are exactly those of generation `generation`."""

    def holds(self, boot: Path, new: Generation, menu: MenuFiles) -> bool:
        """Whether its files (`menu`, as read) are already exactly what `stage_menu`
        would write for `new`, so that a transaction may leave them as they are."""

    def count_tries(self, boot: Path, counters: Mapping[str, Counter]) -> dict[str, Counter]:
        """The entry-name counters (by deployment path) with its own counters folded in."""

    def mark_good(self, boot: Path, dep: Deployment) -> list[str]:
        """Stop its own counting of `dep`'s boots: what changed, as short descriptions."""

    def write_static(self, boot: Path, config: SysrootConfig) -> None:
        """Files that change only with the sysroot's settings."""

    def install(self, esp: Path, signer: Signer | None) -> Path:
        """Put its binary on the ESP whose content is at `esp`; where it went."""


def backend_for(bootloader: Bootloader) -> Backend:
    return _registry()[bootloader]


def installable() -> list[Bootloader]:
    """The bootloaders whose binary bootkit can put on an ESP."""
    return [b for b in Bootloader if backend_for(b).installable]


@functools.cache
def _registry() -> dict[Bootloader, Backend]:
    # Imported here: the backend modules import this package's types.
    from bootkit.boot.backends import grub, none, systemd_boot

    return {b.bootloader: b for b in (systemd_boot.BACKEND, grub.BACKEND, none.BACKEND)}


def write_if_changed(path: Path, text: str) -> None:
    """Replace `path` only when its text differs: a file a bootloader reads is not
    rewritten needlessly (FAT has no atomic replace)."""
    try:
        if path.read_text() == text:
            return
    except FileNotFoundError:
        pass
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, text)
