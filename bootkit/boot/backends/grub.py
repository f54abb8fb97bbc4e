"""GRUB: a fixed stub, one slot file per generation, and a boot counter in grubenv.

`grub/grub.cfg` never changes once written; it `source`s the newest of the slot
files `bootkit/grub/slot-{0,1,2}.cfg` (see `bootkit.formats.grubscript`). A switch
writes the cyclic successor of the slot in use and deletes the old one afterwards,
so GRUB's menu changes in a single rename, also on FAT.

GRUB cannot rename files, so it cannot count boots in the entry names. The counter
of the default deployment lives in bootkit's grubenv instead (`bootkit_counted` =
the deployment's path, `bootkit_tries` = tries left): the default's menu entry
counts it down, and the slot file boots the second entry once it is used up.
Marking good removes `bootkit_tries`. Each transaction folds that counter into the
default's entry name, so what GRUB counted is never lost.

Installed on an ESP, GRUB is an image made with `grub-mkimage` around a small
embedded config: find the ESP by the stub, talk over the serial port as well as the
screen, and read the stub.
"""

from __future__ import annotations

import tempfile
from collections.abc import Mapping
from pathlib import Path

from bootkit.base.files import write_unsynced
from bootkit.base.process import run
from bootkit.boot.backends import Generation, MenuFiles, StagedMenu, write_if_changed
from bootkit.boot.counting import Counter
from bootkit.boot.entries import options_for
from bootkit.boot.esp import REMOVABLE_PATH, install_binary
from bootkit.boot.payloads import UKI_FILE, Payload
from bootkit.errors import BootkitError
from bootkit.formats import grubenv, grubscript
from bootkit.formats.bootvalues import MAX_TRIES
from bootkit.formats.grubscript import COUNTED_VAR, SLOTS, TRIES_VAR, Counting, MenuEntry
from bootkit.records.config import Bootloader, SysrootConfig
from bootkit.records.deployment import Deployment
from bootkit.secureboot.signing import Signer

GRUB_STUB = "grub/grub.cfg"
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


class Grub:
    bootloader = Bootloader.GRUB
    atomic_switch = True
    installable = True

    def read_menu(self, boot: Path) -> MenuFiles:
        slot_dir = _slot_dir(boot)
        if not slot_dir.is_dir():
            return MenuFiles()
        texts = {
            path: path.read_text(errors="replace")
            for path in (_slot_file(boot, i) for i in range(SLOTS))
            if path.is_file()
        }
        generation = None
        if len(texts) == 1:
            generation = grubscript.slot_generation(next(iter(texts.values())))
        return MenuFiles(texts, tuple(sorted(slot_dir.glob(".*.bootkit-tmp"))), generation)

    def stage_menu(self, boot: Path, new: Generation, before: MenuFiles) -> StagedMenu:
        _slot_dir(boot).mkdir(parents=True, exist_ok=True)
        present = [i for i in range(SLOTS) if _slot_file(boot, i) in before.texts]
        current = grubscript.choose_slot(set(present))
        # Only the slot in use may stay: the stub must see the new one as its successor.
        for i in present:
            if i != current:
                _slot_file(boot, i).unlink()
        slot = 0 if current is None else (current + 1) % SLOTS
        final = _slot_file(boot, slot)
        staged = StagedMenu(
            renames=((write_unsynced(final, _slot_text(new).encode()), final),),
            obsolete=tuple(_slot_file(boot, i) for i in range(SLOTS) if i != slot),
        )
        # Rewritten in place, as GRUB's save_env does. Before the new slot is visible,
        # the old slot does not count the new default; after, the counter is there.
        default = new.deployments[0]
        _write_counter(boot, default, _bounded(new.counter(default)))
        return staged

    def is_current(self, menu: MenuFiles, generation: int) -> bool:
        if len(menu.texts) != 1:
            return False
        (text,) = menu.texts.values()
        return grubscript.slot_generation(text) == generation

    def holds(self, boot: Path, new: Generation, menu: MenuFiles) -> bool:
        if len(menu.texts) != 1 or next(iter(menu.texts.values())) != _slot_text(new):
            return False
        path = env_path(boot)
        try:
            env = grubenv.read(path)
        except (BootkitError, OSError):
            return False  # made anew by a switch
        default = new.deployments[0]
        return path.is_file() and env_for(env, default, _bounded(new.counter(default))) == env

    def count_tries(self, boot: Path, counters: Mapping[str, Counter]) -> dict[str, Counter]:
        return fold(counters, read_env(boot))

    def mark_good(self, boot: Path, dep: Deployment) -> list[str]:
        env = read_env(boot)
        found = counted(env)
        if found is None or found[0] != dep.path or found[1] is None:
            return []
        env.pop(TRIES_VAR)
        grubenv.write(env_path(boot), env)
        return [f"cleared the GRUB boot counter ({found[1]} tries were left)"]

    def write_static(self, boot: Path, config: SysrootConfig) -> None:
        write_if_changed(boot / GRUB_STUB, grubscript.render_stub())
        if not env_path(boot).exists():
            grubenv.write(env_path(boot), {})

    def install(self, esp: Path, signer: Signer | None) -> Path:
        dest = esp / REMOVABLE_PATH
        with tempfile.TemporaryDirectory(prefix="bootkit-grub-") as tmp:
            built = Path(tmp) / "grubx64.efi"
            build_image(built)
            install_binary(built, dest, signer)
        return dest


BACKEND = Grub()


def _slot_dir(boot: Path) -> Path:
    return boot / grubscript.SLOT_DIR.lstrip("/")


def _slot_file(boot: Path, slot: int) -> Path:
    return boot / grubscript.slot_path(slot).lstrip("/")


def _slot_text(new: Generation) -> str:
    return grubscript.render_slot(new.number, menu_entries(new), new.config.timeout, _counting(new))


def menu_entries(new: Generation) -> list[MenuEntry]:
    out: list[MenuEntry] = []
    for dep in new.deployments:
        payload = Payload(dep.os, dep.payload)
        out.append(
            MenuEntry(
                id=f"bootkit-{dep.os}-{dep.id}",
                title=f"{dep.title} ({dep.version}, {dep.id})",
                linux="" if dep.uki else payload.rel("linux"),
                initrd=() if dep.uki else (payload.rel("initrd"),),
                options=options_for(new.config, dep),
                efi=payload.rel(UKI_FILE) if dep.uki else "",
            )
        )
    return out


def _counting(new: Generation) -> Counting | None:
    """The default's counter as the slot file counts it down, if it is counted."""
    default = new.deployments[0]
    counter = _bounded(new.counter(default))
    if counter.left is None:
        return None
    return Counting(default.path, max(min(new.config.tries, MAX_TRIES), counter.left))


def _bounded(counter: Counter) -> Counter:
    """A counter GRUB can count down: $BOOT (an entry's name, the grubenv) may claim any
    number of tries, but the slot file has a branch for each try, so at most MAX_TRIES."""
    if counter.left is None or counter.left <= MAX_TRIES:
        return counter
    return Counter(MAX_TRIES, counter.done)


# --- the boot counter in grubenv ------------------------------------------------------


def env_path(boot: Path) -> Path:
    return boot / grubscript.GRUBENV.lstrip("/")


def read_env(boot: Path) -> dict[str, str]:
    """bootkit's GRUB environment; an unreadable block counts as empty (it is rewritten)."""
    try:
        return grubenv.read(env_path(boot))
    except (BootkitError, OSError):
        return {}


def counted(env: Mapping[str, str]) -> tuple[str, int | None] | None:
    """(deployment path, tries left or None once marked good) from a GRUB environment."""
    path = env.get(COUNTED_VAR)
    if not path:
        return None
    raw = env.get(TRIES_VAR)
    if raw is None:
        return path, None
    # What GRUB's ladder cannot count down it treats as used up; so does bootkit.
    # Only ASCII digits: str.isdigit() also takes '²', which int() refuses.
    return path, int(raw) if raw.isascii() and raw.isdigit() else 0


def fold(counters: Mapping[str, Counter], env: Mapping[str, str]) -> dict[str, Counter]:
    """The entry-name counters, with GRUB's live counter of the default folded in."""
    out = dict(counters)
    found = counted(env)
    if found is None:
        return out
    path, left = found
    if left is None:
        out[path] = Counter()
        return out
    before = out.get(path, Counter())
    done = before.done
    if before.left is not None and left <= before.left:
        done = (before.done or 0) + (before.left - left) or before.done
    out[path] = Counter(left, done)
    return out


def env_for(env: Mapping[str, str], default: Deployment, counter: Counter) -> dict[str, str]:
    """`env` with the counter of the new default (or none when it is good)."""
    out = {k: v for k, v in env.items() if k not in (COUNTED_VAR, TRIES_VAR)}
    if counter.left is not None:
        out[COUNTED_VAR] = default.path
        out[TRIES_VAR] = str(counter.left)
    return out


def _write_counter(boot: Path, default: Deployment, counter: Counter) -> None:
    path = env_path(boot)
    try:
        env, readable = grubenv.read(path), path.exists()
    except (BootkitError, OSError):
        env, readable = {}, False  # made anew with what bootkit keeps there
    wanted = env_for(env, default, counter)
    if wanted != env or not readable:
        path.parent.mkdir(parents=True, exist_ok=True)
        grubenv.write(path, wanted)


# --- the binary on the ESP ------------------------------------------------------------


def build_image(output: Path, module_dir: Path = GRUB_MODULE_DIR) -> None:
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
