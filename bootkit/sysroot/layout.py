"""A bootkit sysroot: reading what is recorded on the physical root.

Where each record lives is `bootkit.sysroot.paths`; changing any of it goes through
`bootkit.sysroot.transaction`, under `locked()`.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

from bootkit.boot import counting
from bootkit.boot.bootdir import BootDir
from bootkit.boot.counting import Counter
from bootkit.errors import BootkitError
from bootkit.records.config import SysrootConfig
from bootkit.records.deployment import Deployment
from bootkit.records.state import State
from bootkit.sysroot import inventory
from bootkit.sysroot.paths import SysrootPaths


class Sysroot(SysrootPaths):
    """The physical root filesystem that holds /bootkit, and $BOOT below it."""

    def __init__(self, path: Path | str) -> None:
        super().__init__(path)
        # Warnings given while this object is in use, so that each is given once.
        self.told: set[str] = set()

    # --- what is recorded -------------------------------------------------------

    @property
    def config(self) -> SysrootConfig:
        return SysrootConfig.load(self.config_path)

    @property
    def boot_path(self) -> Path:
        return self.path / self.config.boot_dir.lstrip("/")

    @property
    def boot(self) -> BootDir:
        cfg = self.config
        return BootDir(self.path / cfg.boot_dir.lstrip("/"), cfg)

    def state(self) -> State:
        """The recorded state; without a state file, one rebuilt from the disk."""
        recorded = State.load(self.state_path)
        if recorded is not None:
            return recorded
        view = None
        with contextlib.suppress(BootkitError, OSError):  # $BOOT only helps find the default
            view = self.boot.view()
        return inventory.rebuilt_state(self, None, view)

    def next_serial(self, state: State) -> int:
        """The serial number of the next deployment: above every one used so far."""
        return inventory.highest_serial(self, state) + 1

    def deployments(self, state: State | None = None) -> list[Deployment]:
        state = state or self.state()
        return [self.load(ref) for ref in state.deployments]

    def boot_counters(self, deps: Sequence[Deployment]) -> dict[str, Counter]:
        """Each deployment's boot counter (by ref) as $BOOT holds it now."""
        found = self.boot.counters()
        return {d.ref: found[d.path] for d in deps if d.path in found}

    def ordered(
        self, state: State | None = None, counters: Mapping[str, Counter] | None = None
    ) -> list[Deployment]:
        """Menu order: the default first, then the others newest first, those found bad last."""
        state = state or self.state()
        deps = self.deployments(state)
        if counters is None:
            counters = self.boot_counters(deps)
        return counting.menu_order(deps, state.default, counters)

    def resolve(self, ident: str, state: State | None = None) -> Deployment:
        """Find a deployment by `<os>/<id>`, `<id>`, or the serial number `<id>` starts with."""
        return self.load(resolve_ref(ident, (state or self.state()).deployments))

    # --- one change at a time ---------------------------------------------------

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        """Hold the sysroot's lock; every change to it happens inside."""
        if not self.meta.is_dir():
            raise BootkitError(
                f"{self.path} is not a bootkit sysroot", hint="run 'bootkit init' first"
            )
        fd = os.open(self.meta / "lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise BootkitError(
                    "another bootkit command is running on this sysroot",
                    hint="wait for it to finish",
                ) from None
            yield
        finally:
            os.close(fd)


def resolve_ref(ident: str, refs: Sequence[str]) -> str:
    """The one of `refs` that `ident` names: `<os>/<id>`, `<id>`, or the serial number
    `<id>` starts with. Only names are compared, so damaged metadata does not matter."""
    exact = [r for r in refs if ident in (r, r.partition("/")[2])]
    if not exact and ident.isascii() and ident.isdigit():
        exact = [r for r in refs if inventory.serial_of(r.partition("/")[2]) == int(ident)]
    if len(exact) == 1:
        return exact[0]
    if not exact:
        known = ", ".join(r.partition("/")[2] for r in refs) or "none"
        raise BootkitError(
            f"no deployment {ident!r}", hint=f"deployments: {known}; see 'bootkit status'"
        )
    raise BootkitError(f"{ident!r} names several deployments", hint="use <os>/<id>")
