"""Automatic boot assessment: count the tries of a new entry, fall back when they run out.

Each deployment's entry is in one of three states, as in the UAPI Automatic Boot
Assessment scheme:

- good: its file name has no counter; it booted and was marked good, or is not counted;
- indeterminate: `+LEFT[-DONE]` before `.conf`; it may be tried LEFT more times;
- bad: `+0[-DONE]`; it was tried until no tries were left, and never marked good.

systemd-boot keeps the counter itself: before it boots a counted entry it renames
`+3` to `+2-1`, and it sorts entries with no tries left last, so the next entry boots.
Once the system is up, `systemd-bless-boot` or `bootkit-mark-good` drops the counter.
A bootloader that cannot rename files keeps a counter of its own, which its backend
folds into these (GRUB's grubenv counter, see `bootkit.boot.backends.grub`).

The entry names are bootkit's record for every backend: each transaction carries
every counter over into the entries it writes, after folding the backend's counters
in, so what the bootloader counted is never lost; an entry whose counter and text
stay is left as it is.
A new deployment gets `+tries` (the sysroot's setting, or `deploy --tries`);
`set-default` and `rollback` count their choice afresh unless it is known good
(`rollback` never picks a bad one); a default found bad gives way, at the next
transaction, to the first deployment in menu order that is not bad, which is the
one the bootloader falls back to.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from bootkit.base.files import fsync_dir
from bootkit.contract import bootkit_arg
from bootkit.errors import BootkitError
from bootkit.formats.bls import ENTRIES_DIR, BootEntry, EntryName, parse_entry
from bootkit.records.deployment import Deployment

GOOD = "good"
INDETERMINATE = "indeterminate"
BAD = "bad"

# The vendor GUID of the Boot Loader Interface variables (LoaderBootCountPath, ...).
LOADER_VENDOR = "4a67b082-0a4c-41cf-b6c7-440b29bb8c4f"

@dataclass(frozen=True)
class Counter:
    """An entry's boot counter; no `left` means no counting (good)."""

    left: int | None = None
    done: int | None = None

    @property
    def state(self) -> str:
        if self.left is None:
            return GOOD
        return BAD if self.left == 0 else INDETERMINATE

    @property
    def bad(self) -> bool:
        return self.left == 0

    def describe(self) -> str:
        if self.left is None:
            return "good"
        tried = f"tried {self.done} time{'s' if self.done != 1 else ''}" if self.done else ""
        if self.left == 0:
            return "bad: no boot tries left" + (f", {tried}" if tried else "")
        left = f"{self.left} boot tr{'ies' if self.left != 1 else 'y'} left"
        return left + (f" ({tried})" if tried else "") + ", not yet marked good"


def fresh(tries: int) -> Counter:
    """The counter of a new entry: `+tries`, or none when counting is off."""
    return Counter(tries) if tries > 0 else Counter()


def rearmed(current: Counter | None, tries: int) -> Counter:
    """An explicitly chosen entry: counted afresh, unless it is known good."""
    if current is not None and current.left is None:
        return current
    return fresh(tries)


# --- what $BOOT says -------------------------------------------------------------------


def entry_counters(entries: Iterable[tuple[str, BootEntry]]) -> dict[str, Counter]:
    """Each deployment's counter (by path) as its entry's file name records it.

    While an interrupted transaction leaves two entries of one deployment, the one
    that sorts first is what boots and counts, so its name wins.
    """
    newest: dict[str, tuple[tuple[int, ...], Counter]] = {}
    for fname, entry in entries:
        name = EntryName.parse(fname)
        path = bootkit_arg(entry.options)
        if name is None or path is None:
            continue
        if path not in newest or name.precedence > newest[path][0]:
            newest[path] = (name.precedence, Counter(name.tries_left, name.tries_done))
    return {path: counter for path, (_, counter) in newest.items()}


# --- deciding a transaction's counters ------------------------------------------------


@dataclass(frozen=True)
class Plan:
    """The counters (by deployment ref) a transaction writes, and its default."""

    counters: dict[str, Counter]
    default: str | None
    demoted: str | None = None  # a bad default that `default` replaces


def plan(
    deps: Sequence[Deployment],
    default: str | None,
    current: Mapping[str, Counter],
    tries: int,
    arm: Mapping[str, int],
) -> Plan:
    """Carry each counter over; count new and re-armed entries afresh; replace a bad default.

    `current` is by deployment path (what `BootDir.counters` reads), `arm` by ref: the
    deployments chosen explicitly in this transaction, with the tries to give them.
    """
    counters: dict[str, Counter] = {}
    for dep in deps:
        now = current.get(dep.path)
        if dep.ref in arm:
            counters[dep.ref] = rearmed(now, arm[dep.ref])
        else:
            counters[dep.ref] = now if now is not None else fresh(tries)
    if default is None or default not in counters or not counters[default].bad:
        return Plan(counters, default)
    fallback = next((d.ref for d in menu_order(deps, default, counters)[1:]
                     if not counters[d.ref].bad), None)
    if fallback is None:
        return Plan(counters, default)
    return Plan(counters, fallback, demoted=default)


def menu_order(
    deps: Sequence[Deployment], default: str | None, counters: Mapping[str, Counter]
) -> list[Deployment]:
    """The default first, then the others newest first, those found bad last.

    That is systemd-boot's order (entries with no tries left sort last), and it makes
    the second GRUB entry, which boots when the default's tries run out, the newest
    deployment not found bad.
    """
    def key(d: Deployment) -> tuple[bool, bool, int]:
        bad = d.ref in counters and counters[d.ref].bad
        return (d.ref != default, bad, -d.serial)

    return sorted(deps, key=key)


# --- marking a boot good ---------------------------------------------------------------


def uncounted(filename: str) -> str | None:
    """`name+2-1.conf` -> `name.conf`; None when the name carries no counter."""
    m = re.fullmatch(r"(?P<stem>.+?)\+\d+(?:-\d+)?(?P<ext>\.[A-Za-z0-9]+)", filename)
    return m["stem"] + m["ext"] if m else None


def mark_entries_good(boot: Path, dep: Deployment) -> list[str]:
    """Stop counting `dep`'s boots in its entry's name: what was renamed, as short descriptions.

    Every entry of it loses its counter, should two be present. Renames on
    $BOOT are what systemd-bless-boot does too; no bootkit lock is taken, since the
    bootloader and systemd rename entries without one as well.
    """
    entries_dir = boot / ENTRIES_DIR
    done: list[str] = []
    if not entries_dir.is_dir():
        return done
    for p in sorted(entries_dir.iterdir()):
        good = uncounted(p.name)
        if good is None or EntryName.parse(p.name) is None:
            continue
        try:
            options = parse_entry(p.read_text(errors="replace")).options
        except (BootkitError, OSError):
            continue  # not readable: not an entry this deployment boots from
        if bootkit_arg(options) != dep.path:
            continue
        try:
            os.rename(p, p.with_name(good))
        except OSError as err:
            raise BootkitError(
                f"cannot rename boot entry {p}: {err.strerror or err}",
                hint=f"is {boot} mounted read-write?",
            ) from None
        done.append(f"renamed {p.name} to {good}")
    if done:
        fsync_dir(entries_dir)
    return done
