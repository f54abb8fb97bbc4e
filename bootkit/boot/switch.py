"""The boot configuration on $BOOT and the one step that switches it.

Why entries are named as they are: a menu of many deployments must not cost a
rewrite of every entry when one deployment comes or goes. So an entry's file name
depends on its own deployment only (see `bootkit.formats.bls.EntryName`): its class
(the default, another, one found bad), its serial number, the generation that wrote
its text, and its boot counter. GRUB's blscfg (file names) and systemd-boot
(sort-keys) both put the larger (class, serial, generation) first, which is the
menu order: the default, then the others newest first, the bad ones last. A switch
writes only the entries whose name or text is new; an entry that keeps both stays.

Why a switch goes in this order. Nothing a bootloader reads is rewritten in place
(FAT cannot replace a file atomically), and FAT has no journal: after a power cut
any subset of the renames and unlinks since the last directory fsync may be on
disk. So:

1. payloads (kernels, initramfs images) are already on $BOOT under new names;
2. the new entries, and the backend's menu files when they change, are written
   under temporary names that no bootloader reads, and the filesystem is synced;
3. the new default's entry, if it is new, is renamed into place and made durable
   on its own; then the other new entries, then the backend's menu files;
4. the entries the new menu does not have are removed: first those that sort
   before the new default's entry, lowest first and each made durable before the
   next, then the rest.

What boots first is the atomic point, and it moves exactly once. When the new
default sorts after the old one (a rollback to an older deployment; two entries of
the default class exist for a moment), the old default keeps booting through step 3
and stops at the last removal of step 4's first group; at that point every entry of
the new menu is durable. Otherwise (a deploy, a changed default's text: a larger
serial or generation) the new default boots from its own rename in step 3 on, and
the entries of the old menu are all still there. Before the atomic point the whole
old menu is on $BOOT, after it the whole new one; what else is visible is an entry
of the other menu for a deployment that is in both (say the old default under its
old class): it boots its deployment, and the next command removes it (`is_tidy`).
An entry whose text changes is written under a new generation, so between the
rename and the removal the new text is the one that sorts first.

Entries of the old name format (a generation and a menu rank) sort after every new
name in both bootloaders, so the first switch after an upgrade writes the whole
menu anew, shows the new default first, and removes the old entries last.

When $BOOT already holds what a switch would leave (`holds`), the transaction
writes nothing. A backend whose menu is one file (GRUB) switches it in one rename,
after the entries its menu boots are on disk.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from bootkit.base.files import fsync_dir, syncfs, write_unsynced
from bootkit.boot import counting
from bootkit.boot.backends import Backend, Generation, MenuFiles, StagedMenu
from bootkit.boot.entries import entry_name, render_entry
from bootkit.errors import BootkitError
from bootkit.formats.bls import (
    BAD,
    DEFAULT,
    ENTRIES_DIR,
    MAX_RANK,
    OTHER,
    BootEntry,
    EntryName,
    parse_entry,
)
from bootkit.records.deployment import Deployment


@dataclass(frozen=True)
class BootView:
    """What is on $BOOT now, read without trusting bootkit's own state."""

    entries: list[tuple[str, BootEntry]]  # filename, parsed entry
    bad_entries: list[tuple[str, str]]  # filename, why it could not be read
    generations: set[int]  # of every bootkit entry, either name format
    menu: MenuFiles  # the backend's own menu files
    stray: list[Path]  # temp files left by an interrupted write
    texts: dict[str, str] = field(default_factory=dict)  # filename -> text, as read
    names: dict[str, EntryName] = field(default_factory=dict)  # filename -> parsed name

    @property
    def mark(self) -> int | None:
        """The generation $BOOT shows: its backend's menu's, else its newest entry's."""
        if self.menu.generation is not None:
            return self.menu.generation
        return max(self.generations, default=None)


@dataclass(frozen=True)
class PlannedEntry:
    """One entry of a new menu: its name, its text, and whether $BOOT has it already."""

    dep: Deployment
    name: EntryName
    text: str
    present: bool


def read_view(boot: Path, backend: Backend) -> BootView:
    entries: list[tuple[str, BootEntry]] = []
    bad: list[tuple[str, str]] = []
    stray: list[Path] = []
    texts: dict[str, str] = {}
    names: dict[str, EntryName] = {}
    edir = boot / ENTRIES_DIR
    try:
        # Names, not Paths: a large menu is listed and read here on every transaction.
        listed = sorted(os.listdir(edir))
    except (FileNotFoundError, NotADirectoryError):
        listed = []
    for fname in listed:
        if fname.endswith(".bootkit-tmp"):
            stray.append(edir / fname)
            continue
        name = EntryName.parse(fname)
        if name is None:
            continue
        names[fname] = name
        where = os.path.join(edir, fname)
        try:
            with open(where, encoding="utf-8", errors="replace") as fh:
                texts[fname] = fh.read()
            entries.append((fname, parse_entry(texts[fname], where)))
        except (BootkitError, OSError) as err:
            bad.append((fname, str(err)))
    gens = {n.generation for n in names.values()}
    menu = backend.read_menu(boot)
    return BootView(entries, bad, gens, menu, [*stray, *menu.stray], texts, names)


def is_tidy(view: BootView) -> bool:
    """No temp files, unreadable or old-format entries, nor two entries of one deployment."""
    if view.stray or view.bad_entries:
        return False
    tails = [n.tail for n in view.names.values()]
    return len(set(tails)) == len(tails) and not any(n.legacy for n in view.names.values())


def is_current(view: BootView, generation: int, backend: Backend) -> bool:
    """Whether $BOOT is tidy and shows generation `generation`, the state's: a state
    raised past it (see `bootkit.sysroot.kargs`) asks the next command to switch."""
    if not is_tidy(view) or view.mark != generation:
        return False
    return backend.is_current(view.menu, generation)


def plan(view: BootView, new: Generation) -> list[PlannedEntry]:
    """The entries of `new`, in menu order: an entry $BOOT holds with the very text
    it would have keeps its name (and generation); any other is named for `new`."""
    held: dict[tuple[int, int, str, int | None, int | None], list[EntryName]] = {}
    for n in view.names.values():
        if not n.legacy:
            held.setdefault((n.cls, n.serial, n.tail, n.tries_left, n.tries_done), []).append(n)
    out = []
    for i, dep in enumerate(new.deployments):
        counter = new.counter(dep)
        cls = DEFAULT if i == 0 else BAD if counter.bad else OTHER
        out.append(_planned(view, new, dep, entry_name(dep, new.number, cls, counter), held))
    _check_order(out)
    return out


def needs_writes(boot: Path, backend: Backend, view: BootView, new: Generation,
                 planned: Sequence[PlannedEntry]) -> bool:
    """Whether a switch to `new` would write a file: an entry, or the backend's menu."""
    return not all(p.present for p in planned) or not backend.holds(boot, new, view.menu)


def holds(boot: Path, backend: Backend, view: BootView, new: Generation) -> bool:
    """Whether $BOOT, as `view` read it, is already exactly `new`, tidy, with no entry
    besides: then there is nothing to switch."""
    if not is_tidy(view) or len(view.names) != len(new.deployments):
        return False
    return not needs_writes(boot, backend, view, new, plan(view, new))


def switch(
    boot: Path,
    backend: Backend,
    new: Generation,
    before: BootView | None = None,
    planned: Sequence[PlannedEntry] | None = None,
) -> None:
    """Make `new.deployments` (default first) the boot menu; entries written now get
    generation `new.number`, entries $BOOT holds already stay as they are.

    Its counters (by deployment ref) go into the entry names; the backend may keep
    the default's in a counter of its own as well (see `bootkit.boot.counting`).
    `before`: $BOOT as the caller read it in this transaction, so that it is not read
    and parsed again (every entry of a large menu); `planned`: `plan(before, new)`.
    """
    _check(new.deployments)
    edir = boot / ENTRIES_DIR
    edir.mkdir(parents=True, exist_ok=True)
    before = before or read_view(boot, backend)
    planned = planned if planned is not None else plan(before, new)
    for p in before.stray:
        p.unlink(missing_ok=True)
    # Step 2: everything new under names no bootloader reads.
    staged = [(p, _stage(edir, p, before)) for p in planned if not p.present]
    keep_menu = backend.holds(boot, new, before.menu)
    menu = StagedMenu() if keep_menu else backend.stage_menu(boot, new, before.menu)
    if staged or menu.renames:
        syncfs(boot)
    # Step 3: make them visible, the new default first.
    _show_entries(edir, staged)
    _show_menu(menu)
    # Step 4: drop what the new menu does not have.
    _drop_entries(boot, backend, edir, planned)
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


def _check_order(planned: Sequence[PlannedEntry]) -> None:
    # The bootloaders order entries by their names alone: a list in another order
    # would be shown in theirs, not in the one asked for.
    keys = [(p.name.cls, p.name.serial) for p in planned[1:]]
    if any(a < b for a, b in itertools.pairwise(keys)):
        raise BootkitError("a boot menu must list the default first, then the others "
                           "newest first, those found bad last")


_HeldKey = tuple[int, int, str, int | None, int | None]


def _planned(view: BootView, new: Generation, dep: Deployment, fresh: EntryName,
             held: dict[_HeldKey, list[EntryName]]) -> PlannedEntry:
    key = (fresh.cls, fresh.serial, fresh.tail, fresh.tries_left, fresh.tries_done)
    text = render_entry(new.config, dep, fresh).render()
    for name in sorted(held.get(key, ()), key=lambda n: -n.generation):
        theirs = _with_sort_key(text, fresh, name)
        if view.texts.get(name.filename) == theirs:
            return PlannedEntry(dep, name, theirs, present=True)
    return PlannedEntry(dep, fresh, text, view.texts.get(fresh.filename) == text)


def _with_sort_key(text: str, rendered: EntryName, name: EntryName) -> str:
    """The text `text` (rendered, and so checked, for `rendered`) would have under `name`:
    only the sort-key differs. Rendering again would check every value once more, for
    each entry of a large menu; no checked line before the sort-key can hold a newline,
    so the first line that starts with it is the sort-key's."""
    line = f"\nsort-key {rendered.sort_key}\n"
    return text.replace(line, f"\nsort-key {name.sort_key}\n", 1)


def _stage(edir: Path, entry: PlannedEntry, before: BootView) -> Path:
    if entry.name.filename in before.names or os.path.lexists(edir / entry.name.filename):
        # Another text under this name: it would be rewritten in place.
        raise BootkitError(f"boot entry {entry.name.filename} exists with another text; "
                           f"generation {entry.name.generation} is in use on $BOOT already")
    return write_unsynced(edir / entry.name.filename, entry.text.encode())


def _show_entries(edir: Path, staged: Sequence[tuple[PlannedEntry, Path]]) -> None:
    """The new default's entry first, made durable on its own: FAT has no journal, so
    a power cut may keep any subset of later renames, and only an entry that is on
    disk before every other new one is sure to be the one that sorts first."""
    if not staged:
        return
    first, *rest = staged
    if first[0].name.cls == DEFAULT:
        _rename(first)
        fsync_dir(edir)
    else:
        rest = list(staged)  # the default keeps its entry, which sorts before these
    for entry in rest:
        _rename(entry)
    fsync_dir(edir)


def _rename(staged: tuple[PlannedEntry, Path]) -> None:
    entry, temp = staged
    os.rename(temp, temp.with_name(entry.name.filename))


def _show_menu(menu: StagedMenu) -> None:
    for temp, final in menu.renames:
        os.rename(temp, final)
    for parent in dict.fromkeys(final.parent for _, final in menu.renames):
        fsync_dir(parent)


def _drop_entries(
    boot: Path, backend: Backend, edir: Path, planned: Sequence[PlannedEntry]
) -> None:
    """Remove every entry the new menu does not have; those that sort before the new
    default's entry first, the one that boots now last of them.

    Listed afresh: systemd-bless-boot or bootkit-mark-good may have renamed an entry
    meanwhile (they take no lock), after the counters were read. A kept entry renamed
    so is still kept; a mark on an entry that goes is carried over to the new one.
    """
    kept = {p.name.stem for p in planned}
    counted = {p.name.tail: p.dep for p in planned
               if not p.present and p.name.tries_left is not None}
    default = planned[0].name.precedence
    first: list[tuple[EntryName, Path]] = []
    rest: list[tuple[EntryName, Path]] = []
    for fname in os.listdir(edir):
        name = EntryName.parse(fname)
        if name is None or name.stem in kept:
            continue
        if name.tries_left is None and name.tail in counted:
            mark_good(boot, backend, counted.pop(name.tail))
        (first if name.precedence > default else rest).append((name, edir / fname))
    for _, path in sorted(first, key=lambda e: e[0].precedence):
        path.unlink(missing_ok=True)
        fsync_dir(edir)
    _unlink_all(p for _, p in rest)
    if rest:
        fsync_dir(edir)


def _unlink_all(paths: Iterable[Path]) -> None:
    for path in paths:
        path.unlink(missing_ok=True)


def _drop_old_menu(menu: StagedMenu) -> None:
    for path in menu.obsolete:
        if path.exists():
            path.unlink()
    for parent in dict.fromkeys(path.parent for path in menu.obsolete):
        fsync_dir(parent)

