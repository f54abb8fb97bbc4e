"""GRUB configuration: a fixed stub `grub.cfg` and one generated file per generation.

FAT has no atomic replace, so the stub never changes after it is written. It picks
one of three slot files by which of them exist: after a transaction exactly one
does; while a transaction runs, the old slot and its cyclic successor exist, and
the successor is the newer one. Any stock GRUB (no BLS module) can read this.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Sequence
from dataclasses import dataclass

from bootkit import contract
from bootkit.errors import BootkitError
from bootkit.formats import bootvalues

SLOTS = 3
SLOT_DIR = "/bootkit/grub"
# Boot counting of the default entry (see bootkit.boot.counting).
GRUBENV = contract.GRUBENV
COUNTED_VAR = contract.GRUB_COUNTED_VAR
TRIES_VAR = contract.GRUB_TRIES_VAR

# What GRUB's lexer takes literally outside quotes: a word of only these needs none.
_PLAIN = re.compile(r"[A-Za-z0-9@%+=:,./_-]+")
# A kernel argument: double quotes group words and are dropped, as the kernel and GRUB
# read them; an unterminated quote runs to the end.
_KERNEL_ARG = re.compile(r'(?:[^\s"]+|"[^"]*"?)+')


def quote(value: str) -> str:
    """`value` as one GRUB word: every value that reaches GRUB text goes through here.

    Left bare when nothing in it is special to GRUB (so fixed files keep their bytes),
    else single-quoted; GRUB, like sh, reads `'\\''` inside quotes as one quote.
    """
    if _PLAIN.fullmatch(value):
        return value
    return "'" + value.replace("'", "'\\''") + "'"


def kernel_words(options: str) -> str:
    """A kernel command line as GRUB words, each argument quoted on its own.

    GRUB's `linux` joins its words with spaces and double-quotes one that holds a
    space, so an argument such as `foo="a b"` must reach it as the word `foo=a b`.
    """
    return " ".join(quote(arg.replace('"', "")) for arg in _KERNEL_ARG.findall(options))


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
            f'if [ -z "$bootkit_slot" -a -f {quote(slot_path(i))} -a -f {quote(slot_path(nxt))} ]; then',
            f"  set bootkit_slot={nxt}",
            "fi",
        ]
    for i in range(SLOTS):
        lines += [
            f'if [ -z "$bootkit_slot" -a -f {quote(slot_path(i))} ]; then',
            f"  set bootkit_slot={i}",
            "fi",
        ]
    lines += [
        'if [ -n "$bootkit_slot" ]; then',
        f"  source {quote(SLOT_DIR)}/slot-$bootkit_slot.cfg",
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
    # A Unified Kernel Image, started with `chainloader` instead of linux/initrd;
    # the options become its load options.
    efi: str = ""


@dataclass(frozen=True)
class Counting:
    """The default entry's boot counter: whose it is, and the most tries it can have left."""

    deployment: str  # its bootkit= path, the value of COUNTED_VAR
    most: int


def _counted(c: Counting) -> str:
    return f'"${COUNTED_VAR}" = {quote(c.deployment)}'


def _echo(message: str) -> str:
    return f"echo {quote(message)}"


def _fallback(c: Counting, entries: Sequence[MenuEntry]) -> list[str]:
    """When the default's tries are used up (or unreadable), boot the second entry."""
    counting = " ".join(f'-a "${TRIES_VAR}" != {n}' for n in range(c.most, 0, -1))
    then = [f"    {_echo(f'bootkit: no boot tries left for {entries[0].id}')}"]
    if len(entries) > 1:
        then += [f"    {_echo(f'bootkit: booting {entries[1].id} instead')}", "    set default=1"]
    return [f'  elif [ {_counted(c)} -a -n "${TRIES_VAR}" {counting} ]; then', *then]


def _count_down(c: Counting, entry: MenuEntry) -> list[str]:
    """Inside the default's menu entry: one try fewer, saved before the kernel starts.

    GRUB script has no arithmetic, so each possible value gets its own branch.
    """
    env = quote(GRUBENV)
    lines = [
        f"  load_env -f {env} {COUNTED_VAR} {TRIES_VAR}",
        f"  if [ {_counted(c)} ]; then",
    ]
    for n in range(c.most, 0, -1):
        keyword = "if" if n == c.most else "elif"
        lines += [
            f'    {keyword} [ "${TRIES_VAR}" = {n} ]; then',
            f"      set {TRIES_VAR}={n - 1}",
            f"      save_env -f {env} {TRIES_VAR}",
            f"      {_echo(f'bootkit: boot tries left for {entry.id}: {n - 1}')}",
        ]
    return [*lines, "    fi", "  fi"]


def _boot(entry: MenuEntry) -> list[str]:
    """The commands that load and start the entry's kernel."""
    if entry.efi:
        return [f"  chainloader {quote(entry.efi)} {kernel_words(entry.options)}"]
    return [
        f"  linux {quote(entry.linux)} {kernel_words(entry.options)}",
        *(f"  initrd {quote(i)}" for i in entry.initrd),
    ]


def render_slot(
    generation: int, entries: Sequence[MenuEntry], timeout: int, counting: Counting | None = None
) -> str:
    """The menu, default first; with `counting`, the default's boots are counted (GRUBENV).

    Every value is quoted, and checked first (see `bootkit.formats.bootvalues`): a
    value that does not pass is refused, never written.
    """
    _check_slot(generation, entries, timeout, counting)
    if counting is not None and counting.most < 1:
        counting = None
    fallback = _fallback(counting, entries) if counting else []
    env = quote(GRUBENV)
    lines = [
        f"# bootkit generation {generation}",
        f"set timeout={timeout}",
        "set default=0",
        # A one-shot choice (grub-reboot style) wins over the default for one boot.
        f"if [ -f {env} ]; then",
        f"  load_env -f {env}",
        '  if [ -n "$next_entry" ]; then',
        '    set default="$next_entry"',
        "    set next_entry=",
        f"    save_env -f {env} next_entry",
        *fallback,
        "  fi",
        "fi",
    ]
    for i, e in enumerate(entries):
        lines += [
            f"menuentry {quote(e.title)} --id {quote(e.id)} {{",
            *(_count_down(counting, e) if counting and i == 0 else []),
            *_boot(e),
            "}",
        ]
    return "\n".join(lines) + "\n"


def _check_slot(
    generation: int, entries: Sequence[MenuEntry], timeout: int, counting: Counting | None
) -> None:
    if isinstance(generation, bool) or not isinstance(generation, int) or generation < 0:
        raise BootkitError(f"invalid GRUB menu generation {generation!r}")
    bootvalues.check_timeout(timeout)
    for e in entries:
        bootvalues.check_word(e.id, "GRUB menu entry id")
        bootvalues.check_text(e.title, "GRUB menu entry title", bootvalues.MAX_MENU_TITLE)
        for path in (e.efi,) if e.efi else (e.linux, *e.initrd):
            bootvalues.check_path(path, "GRUB boot file")
        bootvalues.check_command_line(e.options, "GRUB kernel command line")
    if counting is not None:
        bootvalues.check_path(counting.deployment, "deployment counted by GRUB")
        bootvalues.check_tries(counting.most, "boot tries counted by GRUB")


def parse_menu(text: str) -> list[tuple[str, str]]:
    """(id, linux or chainloader arguments) of each menuentry in a slot file, in order,
    with GRUB's quoting undone."""
    out: list[tuple[str, str]] = []
    current: str | None = None
    for line in text.splitlines():
        try:
            words = shlex.split(line)
        except ValueError:  # an unbalanced quote: not a line bootkit wrote
            continue
        if words[:1] == ["menuentry"]:
            at = words.index("--id") + 1 if "--id" in words else len(words)
            current = words[at] if at < len(words) else ""
        elif current is not None and words[:1] in (["linux"], ["chainloader"]):
            out.append((current, " ".join(words[1:])))
            current = None
    return out


def slot_generation(text: str) -> int | None:
    first = text.split("\n", 1)[0]
    prefix = "# bootkit generation "
    number = first[len(prefix) :]
    if first.startswith(prefix) and number.isascii() and number.isdigit():
        return int(first[len(prefix) :])
    return None
