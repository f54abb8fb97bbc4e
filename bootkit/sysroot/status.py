"""What `bootkit status` shows: the deployments in menu order, as $BOOT has them now.

Reading only: nothing here changes the sysroot, so it works on a read-only one.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass, field

from bootkit.boot import counting
from bootkit.boot.counting import Counter
from bootkit.contract import booted_deployment
from bootkit.errors import BootkitError
from bootkit.records import staged as staged_records
from bootkit.records.deployment import Deployment, ImageOrigin
from bootkit.records.staged import FinalizeFailure
from bootkit.records.state import State
from bootkit.sysroot import inventory
from bootkit.sysroot.layout import Sysroot


@dataclass(frozen=True)
class DeploymentStatus:
    deployment: Deployment
    default: bool
    booted: bool
    entry: str | None  # the entry file's name on $BOOT, if it has one
    counter: Counter = field(default_factory=Counter)  # good, tries left, or bad


@dataclass(frozen=True)
class StagedStatus:
    """A deployment that joins the menu at shutdown (`bootkit deploy --stage`)."""

    ref: str
    path: str
    version: str
    title: str
    locked: bool
    staged_at: float
    image: ImageOrigin | None = None  # the OS image it came from, if any


@dataclass(frozen=True)
class SysrootStatus:
    rows: list[DeploymentStatus]  # menu order
    unreadable_entries: list[tuple[str, str]]  # entry file name, why it could not be read
    # What keeps a deployment from booting or from being shown: ref, what is wrong.
    damaged: list[tuple[str, str]] = field(default_factory=list)
    staged: StagedStatus | None = None
    finalize_failure: FinalizeFailure | None = None

    def find(self, ref: str) -> DeploymentStatus | None:
        return next((s for s in self.rows if s.deployment.ref == ref), None)

    @property
    def bad_default(self) -> DeploymentStatus | None:
        """The default, when it used up its boot tries without being marked good."""
        return next((s for s in self.rows if s.default and s.counter.bad), None)

    @property
    def fallback(self) -> DeploymentStatus | None:
        """What the bootloader boots when the default is bad: the first good one in the menu."""
        return next((s for s in self.rows if not s.counter.bad), None)

    def warnings(self) -> list[str]:
        """What needs the admin's attention, one sentence each."""
        found = [f"unreadable boot entry {name}: {why}" for name, why in self.unreadable_entries]
        found += [f"{ref}: {why}; 'bootkit fsck' tells more" for ref, why in self.damaged]
        bad = self.bad_default
        if bad is not None:
            instead = f"; the bootloader boots {self.fallback.deployment.ref} instead" if (
                self.fallback
            ) else ""
            found.append(
                f"the default deployment {bad.deployment.ref} failed to boot{instead}; the "
                "next bootkit command makes that the default, "
                f"'bootkit set-default {bad.deployment.id}' tries it again"
            )
        failed = self.finalize_failure
        if failed is not None:
            found.append(
                f"the update to {failed.ref} ({failed.version or 'unknown version'}) was not "
                f"applied: finalizing it failed at {_when(failed.failed_at)}: {failed.reason}; "
                "deal with the cause and deploy again, then 'bootkit finalize-staged "
                "--forget-failure' clears this warning"
            )
        return found


def _when(stamp: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(stamp))


def status(sr: Sysroot) -> SysrootStatus:
    """Every deployment with its entry and boot counter, in the order the menu lists them.

    An unreadable $BOOT (not mounted, say) still lists the deployments, without
    entries; one whose metadata cannot be read is left out and named in `damaged`.
    """
    state = sr.state()
    deps, unreadable_meta = inventory.readable(sr, state.deployments)
    booted = booted_deployment()
    names: dict[str, str] = {}
    counters: dict[str, Counter] = {}
    unreadable: list[tuple[str, str]] = []
    boot = sr.boot
    with contextlib.suppress(BootkitError, OSError):
        view = boot.view()
        names = boot.entry_names(view)
        found = boot.counters(view)
        counters = {d.ref: found[d.path] for d in deps if d.path in found}
        unreadable = list(view.bad_entries)
    rows = [
        DeploymentStatus(
            d, d.ref == state.default, d.path == booted, names.get(d.path),
            counters.get(d.ref, Counter()),
        )
        for d in counting.menu_order(deps, state.default, counters)
    ]
    failure = None
    with contextlib.suppress(OSError):
        failure = FinalizeFailure.load(sr.boot_path)
    return SysrootStatus(rows, unreadable, _damaged(sr, state, deps, unreadable_meta),
                         _staged(sr, state), failure)


def _staged(sr: Sysroot, state: State) -> StagedStatus | None:
    record = staged_records.load_run_record() if inventory.staged_ref(sr, state) else None
    if record is None:
        return None
    try:
        dep = sr.load(record.ref)
    except BootkitError:
        return None
    return StagedStatus(dep.ref, dep.path, dep.version, dep.title, record.locked,
                        record.staged_at, dep.image)


def _damaged(
    sr: Sysroot, state: State, deps: list[Deployment], unreadable: dict[str, BootkitError]
) -> list[tuple[str, str]]:
    out = [(ref, err.message) for ref, err in unreadable.items()]
    with contextlib.suppress(BootkitError, OSError):
        boot = sr.boot_path
        out += [(d.ref, f"not in the boot menu: {why}") for d in deps
                if (why := inventory.why_unbootable(sr, d, boot)) is not None]
    if not sr.state_path.exists() and state.deployments:
        out.append((str(sr.state_path), "missing; made again from the deployments on disk "
                    "by the next bootkit command that changes anything"))
    listed = {*state.deployments, *state.in_flight}
    out += [(ref, "on disk, but not listed in the state")
            for ref in inventory.found_on_disk(sr) if ref not in listed]
    return out


def chosen(sr: Sysroot, ident: str | None = None) -> Deployment:
    """Deployment `ident`; without one, the booted deployment, else the default."""
    if ident is not None:
        return sr.resolve(ident)
    rows = status(sr).rows
    row = next((s for s in rows if s.booted), None) or next((s for s in rows if s.default), None)
    if row is None:
        raise BootkitError("no deployments yet", hint="deploy a tree first with 'bootkit deploy'")
    return row.deployment
