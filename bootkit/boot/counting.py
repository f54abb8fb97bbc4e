"""Automatic boot assessment: count the tries of a new entry, fall back when they run out.

Each deployment's entry is in one of three states, as in the UAPI Automatic Boot
Assessment scheme:

- good: its file name has no counter; it booted and was marked good, or is not counted;
- indeterminate: `+LEFT[-DONE]` before `.conf`; it may be tried LEFT more times;
- bad: `+0[-DONE]`; it was tried until no tries were left, and never marked good.

systemd-boot keeps the counter itself: before it boots a counted entry it renames
`+3` to `+2-1`, and it sorts entries with no tries left last, so the next entry boots.
Once the system is up, `systemd-bless-boot` or `bootkit-mark-good` drops the counter.

GRUB cannot rename files. For it the counter of the default deployment lives in
bootkit's grubenv (`bootkit_counted` = the deployment's path, `bootkit_tries` = tries
left): the default's menu entry counts it down, and the slot file boots the second
entry instead once it is used up (see `grubcfg`). Marking good removes `bootkit_tries`.

The entry names are bootkit's record for every backend: each transaction rewrites
the entries as a new generation and carries every counter over, after folding the
grubenv counter into the default's, so what the bootloader counted is never lost.
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
from bootkit.formats import grubenv
from bootkit.formats import grubscript as grubcfg
from bootkit.formats.bls import BootEntry, EntryName, parse_entry
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

    While an interrupted transaction leaves two generations, the newer one is what
    boots, so its name wins.
    """
    newest: dict[str, tuple[int, Counter]] = {}
    for fname, entry in entries:
        name = EntryName.parse(fname)
        path = bootkit_arg(entry.options)
        if name is None or path is None:
            continue
        if path not in newest or name.generation > newest[path][0]:
            newest[path] = (name.generation, Counter(name.tries_left, name.tries_done))
    return {path: counter for path, (_, counter) in newest.items()}


def grub_counter(env: Mapping[str, str]) -> tuple[str, int | None] | None:
    """(deployment path, tries left or None once marked good) from a GRUB environment."""
    path = env.get(grubcfg.COUNTED_VAR)
    if not path:
        return None
    raw = env.get(grubcfg.TRIES_VAR)
    if raw is None:
        return path, None
    # What GRUB's ladder cannot count down it treats as used up; so does bootkit.
    return path, int(raw) if raw.isdigit() else 0


def fold_grub(counters: Mapping[str, Counter], env: Mapping[str, str]) -> dict[str, Counter]:
    """The entry-name counters, with GRUB's live counter of the default folded in."""
    out = dict(counters)
    found = grub_counter(env)
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


def read_grubenv(boot: Path) -> dict[str, str]:
    """bootkit's GRUB environment; an unreadable block counts as empty (it is rewritten)."""
    try:
        return grubenv.read(boot / grubcfg.GRUBENV.lstrip("/"))
    except (BootkitError, OSError):
        return {}


def on_boot(boot: Path, bootloader: str, entries: Iterable[tuple[str, BootEntry]]) -> dict[str, Counter]:
    """Every deployment's counter (by path) as $BOOT holds it now."""
    counters = entry_counters(entries)
    if bootloader == "grub":
        counters = fold_grub(counters, read_grubenv(boot))
    return counters


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

    `current` is by deployment path (what `on_boot` reads), `arm` by ref: the
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


def grub_env_for(env: Mapping[str, str], default: Deployment, counter: Counter) -> dict[str, str]:
    """`env` with the counter of the new default (or none when it is good)."""
    out = {k: v for k, v in env.items() if k not in (grubcfg.COUNTED_VAR, grubcfg.TRIES_VAR)}
    if counter.left is not None:
        out[grubcfg.COUNTED_VAR] = default.path
        out[grubcfg.TRIES_VAR] = str(counter.left)
    return out


# --- marking a boot good ---------------------------------------------------------------


def uncounted(filename: str) -> str | None:
    """`name+2-1.conf` -> `name.conf`; None when the name carries no counter."""
    m = re.fullmatch(r"(?P<stem>.+?)\+\d+(?:-\d+)?(?P<ext>\.[A-Za-z0-9]+)", filename)
    return m["stem"] + m["ext"] if m else None


def mark_good(boot: Path, bootloader: str, entries_dir: Path, dep: Deployment) -> list[str]:
    """Stop counting `dep`'s boots: what was changed, as short descriptions.

    The entry loses its counter (every generation's, should two be present), and for
    GRUB the grubenv counter goes when it counts `dep`. Renames on $BOOT are what
    systemd-bless-boot does too; no bootkit lock is taken, since the bootloader and
    systemd rename entries without one as well.
    """
    done: list[str] = []
    if entries_dir.is_dir():
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
    if bootloader == "grub":
        env_path = boot / grubcfg.GRUBENV.lstrip("/")
        env = read_grubenv(boot)
        found = grub_counter(env)
        if found is not None and found[0] == dep.path and found[1] is not None:
            env.pop(grubcfg.TRIES_VAR)
            grubenv.write(env_path, env)
            done.append(f"cleared the GRUB boot counter ({found[1]} tries were left)")
    return done
