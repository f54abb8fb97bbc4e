"""GRUB configuration: a fixed stub `grub.cfg` and one generated file per generation.

FAT has no atomic replace, so the stub never changes after it is written. It picks
one of three slot files by which of them exist: after a transaction exactly one
does; while a transaction runs, the old slot and its cyclic successor exist, and
the successor is the newer one. Any stock GRUB (no BLS module) can read this.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

SLOTS = 3
SLOT_DIR = "/bootkit/grub"
GRUBENV = f"{SLOT_DIR}/grubenv"


def slot_path(slot: int) -> str:
    return f"{SLOT_DIR}/slot-{slot}.cfg"


def choose_slot(present: set[int]) -> int | None:
    """The slot the stub loads, given which slot files exist (mirrors the stub's logic)."""
    for i in range(SLOTS):
        if i in present and (i + 1) % SLOTS in present:
            return (i + 1) % SLOTS
    return min(present) if present else None


def render_stub() -> str:
    lines = [
        "# Written by bootkit; never edited in place. The menu is in the newest slot file.",
        "set bootkit_slot=",
    ]
    for i in range(SLOTS):
        nxt = (i + 1) % SLOTS
        lines += [
            f'if [ -z "$bootkit_slot" -a -f {slot_path(i)} -a -f {slot_path(nxt)} ]; then',
            f"  set bootkit_slot={nxt}",
            "fi",
        ]
    for i in range(SLOTS):
        lines += [
            f'if [ -z "$bootkit_slot" -a -f {slot_path(i)} ]; then',
            f"  set bootkit_slot={i}",
            "fi",
        ]
    lines += [
        'if [ -n "$bootkit_slot" ]; then',
        f"  source {SLOT_DIR}/slot-$bootkit_slot.cfg",
        "else",
        '  echo "bootkit: no boot configuration found on this partition; run bootkit bootloader update"',
        "fi",
    ]
    return "\n".join(lines) + "\n"


@dataclass(frozen=True)
class MenuEntry:
    id: str
    title: str
    linux: str
    initrd: Sequence[str]
    options: str


def _quote(s: str) -> str:
    return "'" + s.replace("'", "'\\''") + "'"


def render_slot(generation: int, entries: Sequence[MenuEntry], timeout: int) -> str:
    lines = [
        f"# bootkit generation {generation}",
        f"set timeout={timeout}",
        "set default=0",
        # A one-shot choice (grub-reboot style) wins over the default for one boot.
        f"if [ -f {GRUBENV} ]; then",
        f"  load_env -f {GRUBENV}",
        '  if [ -n "$next_entry" ]; then',
        '    set default="$next_entry"',
        "    set next_entry=",
        f"    save_env -f {GRUBENV} next_entry",
        "  fi",
        "fi",
    ]
    for e in entries:
        lines += [
            f"menuentry {_quote(e.title)} --id {_quote(e.id)} {{",
            f"  linux {e.linux} {e.options}",
            *(f"  initrd {i}" for i in e.initrd),
            "}",
        ]
    return "\n".join(lines) + "\n"


def parse_menu(text: str) -> list[tuple[str, str]]:
    """(id, linux line) of each menuentry in a slot file, in order; for status and tests."""
    out: list[tuple[str, str]] = []
    current: str | None = None
    for line in text.splitlines():
        s = line.strip()
        if s.startswith("menuentry "):
            parts = s.split("--id ", 1)
            current = parts[1].split()[0].strip("'") if len(parts) == 2 else ""
        elif current is not None and s.startswith("linux "):
            out.append((current, s[len("linux ") :]))
            current = None
    return out


def slot_generation(text: str) -> int | None:
    first = text.split("\n", 1)[0]
    prefix = "# bootkit generation "
    if first.startswith(prefix) and first[len(prefix) :].isdigit():
        return int(first[len(prefix) :])
    return None
