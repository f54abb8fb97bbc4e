"""The boot configuration on $BOOT and the one step that switches it.

A switch writes a complete new generation beside the old one and makes it visible
last: the BLS entries every backend shares, plus the backend's own menu files (the
GRUB slot file, say). Nothing a bootloader reads is rewritten in place:

1. payloads (kernels, initramfs images) are already on $BOOT under new names;
2. the new entries and the backend's menu files are written under temporary names
   that no bootloader reads, and the filesystem is synced;
3. they are renamed to their real names, the default entry first: its name sorts
   before every older entry, so from that rename on it is what boots; then the
   backend's menu files;
4. the old generation is removed, entries first.

When $BOOT already holds the very files a new generation would have (`holds`), the
transaction writes none of them and keeps the generation it has: rewriting a large
menu byte for byte only costs time and wears the ESP.

A crash in step 3 can leave entries of both generations for one boot; the default is
then the new one, every listed entry still boots, and the next command tidies up.
A backend whose menu is one file (GRUB) switches it in a single rename.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from bootkit.base.files import fsync_dir, syncfs, write_unsynced
from bootkit.boot import counting
from bootkit.boot.backends import Backend, Generation, MenuFiles, StagedMenu
from bootkit.boot.entries import entry_name, render_entry
from bootkit.errors import BootkitError
from bootkit.formats.bls import ENTRIES_DIR, MAX_RANK, BootEntry, EntryName, parse_entry
from bootkit.records.deployment import Deployment


@dataclass(frozen=True)
class BootView:
    """What is on $BOOT now, read without trusting bootkit's own state."""

    entries: list[tuple[str, BootEntry]]  # filename, parsed entry
    bad_entries: list[tuple[str, str]]  # filename, why it could not be read
    generations: set[int]
    menu: MenuFiles  # the backend's own menu files
    stray: list[Path]  # temp files left by an interrupted write
    texts: dict[str, str] = field(default_factory=dict)  # filename -> text, as read


@dataclass(frozen=True)
class StagedEntry:
    """A new generation's entry, written under its temporary name."""

    dep: Deployment
    name: EntryName
    temp: Path
    final: Path


def read_view(boot: Path, backend: Backend) -> BootView:
    entries: list[tuple[str, BootEntry]] = []
    bad: list[tuple[str, str]] = []
    gens: set[int] = set()
    stray: list[Path] = []
    texts: dict[str, str] = {}
    edir = boot / ENTRIES_DIR
    if edir.is_dir():
        # Names, not Paths: a large menu is listed and read here on every transaction.
        for fname in sorted(os.listdir(edir)):
            if fname.endswith(".bootkit-tmp"):
                stray.append(edir / fname)
                continue
            name = EntryName.parse(fname)
            if name is None:
                continue
            gens.add(name.generation)
            where = os.path.join(edir, fname)
            try:
                with open(where, encoding="utf-8", errors="replace") as fh:
                    texts[fname] = fh.read()
                entries.append((fname, parse_entry(texts[fname], where)))
            except (BootkitError, OSError) as err:
                bad.append((fname, str(err)))
    menu = backend.read_menu(boot)
    return BootView(entries, bad, gens, menu, [*stray, *menu.stray], texts)


def is_current(view: BootView, generation: int, backend: Backend) -> bool:
    """Whether $BOOT holds exactly generation `generation`, complete and tidy."""
    if view.stray or view.bad_entries or view.generations != {generation}:
        return False
    return backend.is_current(view.menu, generation)


def holds(boot: Path, backend: Backend, view: BootView, new: Generation) -> bool:
    """Whether $BOOT, as `view` read it, is already exactly `new`: the same generation,
    complete and tidy, every entry with the very text a switch would write, and the
    backend's files as it would stage them. Then there is nothing to switch."""
    if not is_current(view, new.number, backend) or len(view.entries) != len(new.deployments):
        return False
    for name, text in _rendered(new):
        if view.texts.get(name.filename) != text:
            return False
    return backend.holds(boot, new, view.menu)


def switch(boot: Path, backend: Backend, new: Generation, before: BootView | None = None) -> None:
    """Make `new.deployments` (default first) the boot menu, as generation `new.number`.

    Its counters (by deployment ref) go into the entry names; the backend may keep
    the default's in a counter of its own as well (see `bootkit.boot.counting`).
    `before`: $BOOT as the caller read it in this transaction, so that it is not read
    and parsed again (every entry of a large menu).
    """
    _check(new.deployments)
    edir = boot / ENTRIES_DIR
    edir.mkdir(parents=True, exist_ok=True)
    before = before or read_view(boot, backend)
    for p in before.stray:
        p.unlink(missing_ok=True)
    # Step 2: everything new under names no bootloader reads.
    staged = _stage_entries(edir, new)
    menu = backend.stage_menu(boot, new, before.menu)
    syncfs(boot)
    # Step 3: make them visible, default first.
    _show_entries(edir, staged)
    _show_menu(menu)
    # Step 4: drop the old generation.
    _drop_old_entries(boot, backend, edir, staged, new.number)
    _drop_old_menu(menu)
    backend.write_static(boot, new.config)


def mark_good(boot: Path, backend: Backend, dep: Deployment) -> list[str]:
    """Stop counting `dep`'s boots, in its entry names and the backend's own counter."""
    return counting.mark_entries_good(boot, dep) + backend.mark_good(boot, dep)


def _check(ordered: Sequence[Deployment]) -> None:
    if len(ordered) > MAX_RANK:
        raise BootkitError(f"too many deployments ({len(ordered)}); the limit is {MAX_RANK}")
    if not ordered:
        raise BootkitError(
            "refusing to write a boot configuration with no entries",
            hint="deploy a tree first; bootkit never leaves a machine with nothing to boot",
        )


def _rendered(new: Generation) -> list[tuple[EntryName, str]]:
    """Each entry of `new`, in menu order: its name and its text."""
    out = []
    for rank, dep in enumerate(new.deployments):
        name = entry_name(dep, new.number, rank, new.counter(dep))
        out.append((name, render_entry(new.config, dep, name).render()))
    return out


def _stage_entries(edir: Path, new: Generation) -> list[StagedEntry]:
    staged: list[StagedEntry] = []
    for dep, (name, text) in zip(new.deployments, _rendered(new), strict=True):
        final = edir / name.filename
        staged.append(StagedEntry(dep, name, write_unsynced(final, text.encode()), final))
    return staged


def _show_entries(edir: Path, staged: Sequence[StagedEntry]) -> None:
    """The default's entry first, made durable on its own: FAT has no journal, so a
    power cut may keep any subset of later renames, and only an entry that is on disk
    before every other new one is sure to be the one that sorts first."""
    first, *rest = staged
    os.rename(first.temp, first.final)
    fsync_dir(edir)
    for entry in rest:
        os.rename(entry.temp, entry.final)
    fsync_dir(edir)


def _show_menu(menu: StagedMenu) -> None:
    for temp, final in menu.renames:
        os.rename(temp, final)
    for parent in dict.fromkeys(final.parent for _, final in menu.renames):
        fsync_dir(parent)


def _drop_old_entries(
    boot: Path, backend: Backend, edir: Path, staged: Sequence[StagedEntry], generation: int
) -> None:
    """Remove every entry of another generation.

    Listed afresh: systemd-bless-boot or bootkit-mark-good may have renamed an old
    entry meanwhile (they take no lock), after the counters were read; such a mark
    is carried over to the new entry.
    """
    counted = {e.name.tail: e.dep for e in staged if e.name.tries_left is not None}
    for p in list(edir.iterdir()):
        name = EntryName.parse(p.name)
        if name is None or name.generation == generation:
            continue
        if name.tries_left is None and name.tail in counted:
            mark_good(boot, backend, counted.pop(name.tail))
        p.unlink(missing_ok=True)
    fsync_dir(edir)


def _drop_old_menu(menu: StagedMenu) -> None:
    for path in menu.obsolete:
        if path.exists():
            path.unlink()
    for parent in dict.fromkeys(path.parent for path in menu.obsolete):
        fsync_dir(parent)
