"""The boot configuration on $BOOT and the one step that switches it.

A switch writes a complete new generation beside the old one and makes it visible
last: BLS entries (every backend), plus `loader/loader.conf` for systemd-boot or the
GRUB stub and slot file for GRUB. Nothing a bootloader reads is rewritten in place:

1. payloads (kernels, initramfs images) are already on $BOOT under new names;
2. the new entries and the GRUB slot file are written under temporary names that no
   bootloader reads, and the filesystem is synced;
3. they are renamed to their real names, the default entry first: its name sorts
   before every older entry, so from that rename on it is what boots;
4. the old generation is removed.

A crash in step 3 can leave entries of both generations for one boot; the default is
then the new one, every listed entry still boots, and the next command tidies up.
GRUB's slot file switches in a single rename.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from bootkit.base.files import atomic_write, fsync_dir, syncfs, temp_name, write_unsynced
from bootkit.boot import counting as bootcount
from bootkit.boot import payloads
from bootkit.boot.payloads import Payload
from bootkit.errors import BootkitError
from bootkit.formats import grubenv
from bootkit.formats import grubscript as grubcfg
from bootkit.formats.bls import MAX_RANK, BootEntry, EntryName, parse_entry
from bootkit.records.config import SysrootConfig
from bootkit.records.deployment import Deployment

ENTRIES_DIR = "loader/entries"
LOADER_CONF = "loader/loader.conf"
GRUB_STUB = "grub/grub.cfg"


@dataclass(frozen=True)
class BootView:
    """What is on $BOOT now, read without trusting bootkit's own state."""

    entries: list[tuple[str, BootEntry]]  # filename, parsed entry
    bad_entries: list[tuple[str, str]]  # filename, why it could not be read
    generations: set[int]
    grub_slots: dict[int, str]  # slot -> text
    stray: list[Path]  # temp files left by an interrupted write


def options_for(cfg: SysrootConfig, dep: Deployment) -> str:
    return " ".join([cfg.root_arg, "rw", f"bootkit={dep.path}", *dep.kargs])


def entry_name(
    dep: Deployment, generation: int, rank: int, counter: bootcount.Counter | None = None
) -> EntryName:
    counter = counter or bootcount.Counter()
    return EntryName(
        generation, rank, f"{dep.os}-{dep.id}", tries_left=counter.left, tries_done=counter.done
    )


def render_entry(cfg: SysrootConfig, dep: Deployment, name: EntryName) -> BootEntry:
    payload = Payload(dep.os, dep.payload)
    if dep.uki:
        # The same options as embedded in the UKI: systemd-stub uses these only while
        # Secure Boot is off, and `status` finds the entry of a deployment by them.
        return BootEntry(
            title=dep.title,
            version=dep.version,
            sort_key=name.sort_key,
            linux="",
            initrd=(),
            options=options_for(cfg, dep),
            efi=payload.rel(payloads.UKI_FILE),
        )
    return BootEntry(
        title=dep.title,
        version=dep.version,
        sort_key=name.sort_key,
        linux=payload.rel("linux"),
        initrd=(payload.rel("initrd"),),
        options=options_for(cfg, dep),
    )


def grub_menu(cfg: SysrootConfig, ordered: Sequence[Deployment]) -> list[grubcfg.MenuEntry]:
    out = []
    for dep in ordered:
        payload = Payload(dep.os, dep.payload)
        out.append(
            grubcfg.MenuEntry(
                id=f"bootkit-{dep.os}-{dep.id}",
                title=f"{dep.title} ({dep.version}, {dep.id})",
                linux="" if dep.uki else payload.rel("linux"),
                initrd=() if dep.uki else (payload.rel("initrd"),),
                options=options_for(cfg, dep),
                efi=payload.rel(payloads.UKI_FILE) if dep.uki else "",
            )
        )
    return out


def loader_conf(cfg: SysrootConfig) -> str:
    # No fixed default: systemd-boot boots the first entry, and bootkit's entry names
    # put the default first. The pattern keeps entries of other systems from winning.
    return f"timeout {cfg.timeout}\ndefault bootkit-*\n"


def read_view(boot: Path) -> BootView:
    entries: list[tuple[str, BootEntry]] = []
    bad: list[tuple[str, str]] = []
    gens: set[int] = set()
    stray: list[Path] = []
    edir = boot / ENTRIES_DIR
    if edir.is_dir():
        for p in sorted(edir.iterdir()):
            if p.name.endswith(".bootkit-tmp"):
                stray.append(p)
                continue
            name = EntryName.parse(p.name)
            if name is None:
                continue
            gens.add(name.generation)
            try:
                entries.append((p.name, parse_entry(p.read_text(errors="replace"), str(p))))
            except (BootkitError, OSError) as err:
                bad.append((p.name, str(err)))
    slots: dict[int, str] = {}
    gdir = boot / grubcfg.SLOT_DIR.lstrip("/")
    if gdir.is_dir():
        for i in range(grubcfg.SLOTS):
            p = gdir / f"slot-{i}.cfg"
            if p.is_file():
                slots[i] = p.read_text(errors="replace")
        stray += sorted(gdir.glob(".*.bootkit-tmp"))
    return BootView(entries, bad, gens, slots, stray)


def switch(
    boot: Path,
    cfg: SysrootConfig,
    ordered: Sequence[Deployment],
    generation: int,
    counters: Mapping[str, bootcount.Counter] | None = None,
) -> None:
    """Make `ordered` (default first) the boot menu, as generation `generation`.

    `counters` (by deployment ref) go into the entry names; for GRUB, the default's
    also into grubenv, where GRUB counts it down (see `bootcount`).
    """
    if len(ordered) > MAX_RANK:
        raise BootkitError(f"too many deployments ({len(ordered)}); the limit is {MAX_RANK}")
    if not ordered:
        raise BootkitError(
            "refusing to write a boot configuration with no entries",
            hint="deploy a tree first; bootkit never leaves a machine with nothing to boot",
        )
    counters = counters or {}
    edir = boot / ENTRIES_DIR
    edir.mkdir(parents=True, exist_ok=True)
    before = read_view(boot)
    for p in before.stray:
        p.unlink()

    # Step 2: everything new under names no bootloader reads.
    staged: list[tuple[Path, Path]] = []
    names: list[tuple[Deployment, EntryName]] = []
    for rank, dep in enumerate(ordered):
        name = entry_name(dep, generation, rank, counters.get(dep.ref))
        names.append((dep, name))
        final = edir / name.filename
        text = render_entry(cfg, dep, name).render()
        staged.append((write_unsynced(final, text.encode()), final))
    grub_slot: tuple[Path, Path] | None = None
    gdir = boot / grubcfg.SLOT_DIR.lstrip("/")
    if cfg.bootloader == "grub":
        gdir.mkdir(parents=True, exist_ok=True)
        current = grubcfg.choose_slot(set(before.grub_slots))
        # Only the slot in use may stay: the stub must see the new one as its successor.
        for i in before.grub_slots:
            if i != current:
                (gdir / f"slot-{i}.cfg").unlink()
        new_slot = 0 if current is None else (current + 1) % grubcfg.SLOTS
        final = gdir / f"slot-{new_slot}.cfg"
        counter = counters.get(ordered[0].ref, bootcount.Counter())
        counting = None
        if counter.left is not None:
            counting = grubcfg.Counting(ordered[0].path, max(cfg.tries, counter.left))
        text = grubcfg.render_slot(generation, grub_menu(cfg, ordered), cfg.timeout, counting)
        grub_slot = (write_unsynced(final, text.encode()), final)
        # Rewritten in place, as GRUB's save_env does. Before the new slot is visible,
        # the old slot does not count the new default; after, the counter is there.
        _write_grub_counter(boot, ordered[0], counter)
    syncfs(boot)

    # Step 3: make them visible, default first.
    for tmp, final in staged:
        os.rename(tmp, final)
    fsync_dir(edir)
    if grub_slot:
        os.rename(*grub_slot)
        fsync_dir(gdir)

    # Step 4: drop the old generation. Listed afresh: systemd-bless-boot or
    # bootkit-mark-good may have renamed an old entry meanwhile (they take no lock),
    # after the counters were read; such a mark is carried over to the new entry.
    counted = {name.tail: dep for dep, name in names if name.tries_left is not None}
    for p in list(edir.iterdir()):
        name = EntryName.parse(p.name)
        if name is None or name.generation == generation:
            continue
        if name.tries_left is None and name.tail in counted:
            bootcount.mark_good(boot, cfg.bootloader, edir, counted.pop(name.tail))
        p.unlink(missing_ok=True)
    fsync_dir(edir)
    if grub_slot:
        for i in range(grubcfg.SLOTS):
            p = gdir / f"slot-{i}.cfg"
            if p != grub_slot[1] and p.exists():
                p.unlink()
        fsync_dir(gdir)

    install_static(boot, cfg)


def _write_grub_counter(boot: Path, default: Deployment, counter: bootcount.Counter) -> None:
    path = boot / grubcfg.GRUBENV.lstrip("/")
    try:
        env, readable = grubenv.read(path), path.exists()
    except (BootkitError, OSError):
        env, readable = {}, False  # made anew with what bootkit keeps there
    wanted = bootcount.grub_env_for(env, default, counter)
    if wanted != env or not readable:
        path.parent.mkdir(parents=True, exist_ok=True)
        grubenv.write(path, wanted)


def install_static(boot: Path, cfg: SysrootConfig) -> None:
    """Files that change only with the sysroot's settings, written only when they differ."""
    wanted: dict[str, str] = {}
    if cfg.bootloader == "systemd-boot":
        wanted[LOADER_CONF] = loader_conf(cfg)
    if cfg.bootloader == "grub":
        wanted[GRUB_STUB] = grubcfg.render_stub()
    for rel, text in wanted.items():
        path = boot / rel
        try:
            if path.read_text() == text:
                continue
        except FileNotFoundError:
            pass
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(path, text)
    if cfg.bootloader == "grub":
        env_path = boot / grubcfg.GRUBENV.lstrip("/")
        if not env_path.exists():
            grubenv.write(env_path, {})


def is_current(view: BootView, generation: int, cfg: SysrootConfig) -> bool:
    """Whether $BOOT holds exactly generation `generation`, complete and tidy."""
    if view.stray or view.bad_entries or view.generations != {generation}:
        return False
    if cfg.bootloader == "grub":
        if len(view.grub_slots) != 1:
            return False
        (text,) = view.grub_slots.values()
        if grubcfg.slot_generation(text) != generation:
            return False
    return True


__all__ = ["BootView", "install_static", "is_current", "read_view", "switch", "temp_name"]
