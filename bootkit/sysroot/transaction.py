"""A bootkit sysroot: the physical root holding deployments, and the transaction over it.

Every command that changes boot state runs as one transaction under a lock:
it first repairs whatever an interrupted command left behind, then records the new
intent in `state.json`, then switches $BOOT to match (see `bootkit.boot.switch`).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import sys
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bootkit.base.files import fsync_dir, remove_tree
from bootkit.boot import counting, payloads
from bootkit.boot.bootdir import BootDir
from bootkit.boot.counting import Counter
from bootkit.boot.payloads import Payload
from bootkit.contract import booted_deployment, check_name, is_valid_name
from bootkit.errors import BootkitError
from bootkit.records.config import Bootloader, SysrootConfig
from bootkit.records.deployment import Deployment
from bootkit.records.state import State
from bootkit.sysroot.store import ObjectStore


@dataclass(frozen=True)
class DeploymentStatus:
    deployment: Deployment
    default: bool
    booted: bool
    entry: str | None  # the entry file's name on $BOOT, if it has one
    counter: Counter = field(default_factory=Counter)  # good, tries left, or bad


def _notice(message: str) -> None:
    print(f"bootkit: {message}", file=sys.stderr)


class Sysroot:
    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        self.meta = self.path / "bootkit"
        # Where a transaction says what it decided on its own (a bad default replaced).
        self.notify: Callable[[str], None] = _notice

    # --- layout -----------------------------------------------------------------

    @property
    def config_path(self) -> Path:
        return self.meta / "config.json"

    @property
    def state_path(self) -> Path:
        return self.meta / "state.json"

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

    def stateroot(self, os_name: str) -> Path:
        return self.meta / "deploy" / check_name(os_name, "os")

    def deployment_dir(self, os_name: str, dep_id: str) -> Path:
        return self.stateroot(os_name) / "deploy" / check_name(dep_id, "deployment")

    def metadata_path(self, os_name: str, dep_id: str) -> Path:
        return self.stateroot(os_name) / "deploy" / f"{check_name(dep_id, 'deployment')}.json"

    @property
    def objects(self) -> ObjectStore:
        return ObjectStore(self.meta / "objects")

    # --- reading ----------------------------------------------------------------

    def state(self) -> State:
        return State.load(self.state_path)

    def load(self, ref: str) -> Deployment:
        os_name, _, dep_id = ref.partition("/")
        return Deployment.load(self.metadata_path(os_name, dep_id))

    def deployments(self, state: State | None = None) -> list[Deployment]:
        state = state or self.state()
        return [self.load(ref) for ref in state.deployments]

    def ordered(
        self, state: State | None = None, counters: Mapping[str, Counter] | None = None
    ) -> list[Deployment]:
        """Menu order: the default first, then the others newest first, those found bad last."""
        state = state or self.state()
        deps = self.deployments(state)
        if counters is None:
            counters = self.boot_counters(deps)
        return counting.menu_order(deps, state.default, counters)

    def boot_counters(self, deps: Sequence[Deployment]) -> dict[str, Counter]:
        """Each deployment's boot counter (by ref) as $BOOT holds it now."""
        found = self.boot.counters()
        return {d.ref: found[d.path] for d in deps if d.path in found}

    def resolve(self, ident: str, state: State | None = None) -> Deployment:
        """Find a deployment by `<os>/<id>`, `<id>`, or the serial number `<id>` starts with."""
        state = state or self.state()
        deps = self.deployments(state)
        exact = [d for d in deps if ident in (d.ref, d.id)]
        if not exact and ident.isdigit():
            exact = [d for d in deps if d.serial == int(ident)]
        if len(exact) == 1:
            return exact[0]
        if not exact:
            known = ", ".join(d.id for d in deps) or "none"
            raise BootkitError(
                f"no deployment {ident!r}", hint=f"deployments: {known}; see 'bootkit status'"
            )
        raise BootkitError(f"{ident!r} names several deployments", hint="use <os>/<id>")

    def status(self) -> list[DeploymentStatus]:
        state = self.state()
        booted = booted_deployment()
        names: dict[str, str] = {}
        counters: dict[str, Counter] = {}
        deps = self.deployments(state)
        with contextlib.suppress(BootkitError):
            boot = self.boot
            view = boot.view()
            names = boot.entry_names(view)
            found = boot.counters(view)
            counters = {d.ref: found[d.path] for d in deps if d.path in found}
        return [
            DeploymentStatus(
                d,
                d.ref == state.default,
                d.path == booted,
                names.get(d.path),
                counters.get(d.ref, Counter()),
            )
            for d in self.ordered(state, counters)
        ]

    # --- the transaction --------------------------------------------------------

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
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

    def commit(self, state: State, arm: Mapping[str, int] | None = None) -> State:
        """Record `state` as the intent, then switch $BOOT to it as a new generation.

        Boot counters carry over from $BOOT; new deployments and those in `arm` (ref ->
        tries) are counted afresh. A default found bad gives way to the first deployment
        in menu order that is not (see `counting.plan`).
        """
        boot = self.boot
        state = state.with_changes(generation=state.generation + 1)
        deps = self.deployments(state)
        current = boot.counters()
        plan = counting.plan(deps, state.default, current, boot.config.tries, arm or {})
        if plan.demoted:
            state = state.with_changes(default=plan.default)
            self.notify(
                f"the default deployment {plan.demoted} failed to boot (no boot tries left); "
                f"{plan.default} is the default now ('bootkit set-default {plan.demoted}' "
                "tries it again)"
            )
        ordered = counting.menu_order(deps, state.default, plan.counters)
        if not ordered:
            raise BootkitError(
                "refusing to remove the last deployment", hint="deploy another tree first"
            )
        state.save(self.state_path)
        boot.switch(ordered, state.generation, plan.counters)
        payloads.remove_unreferenced(self.boot_path, {Payload(d.os, d.payload) for d in ordered})
        return state

    def repair(self) -> bool:
        """Finish or undo what an interrupted command left; True if anything was done."""
        state = self.state()
        did = False
        if state.deployments:
            boot = self.boot
            view = boot.view()
            present = payloads.present(boot.path)
            missing = [
                d for d in self.deployments(state) if Payload(d.os, d.payload) not in present
            ]
            if missing:
                raise BootkitError(
                    f"the kernel of deployment {missing[0].ref} is missing from {self.boot_path}",
                    hint="redeploy it, or remove it with 'bootkit undeploy'",
                )
            if not boot.is_current(view, state.generation) or self._unlisted_payloads(
                state, present
            ):
                self.commit(state)
                did = True
        return self._tidy(state) or did

    def _tidy(self, state: State) -> bool:
        """Remove trees and objects that `state` no longer lists.

        Only once $BOOT matches `state`: until then an entry of the old configuration
        may still boot a tree that `state` has dropped.
        """
        did = self._remove_orphans(state)
        if self.objects.prune_pending():
            self.objects.prune()
            did = True
        # Temp files of an interrupted atomic write (state, config, caches).
        for stray in self.meta.glob(".*.bootkit-tmp"):
            stray.unlink()
            did = True
        return did

    def _unlisted_payloads(self, state: State, present: dict[Payload, int]) -> bool:
        wanted = {Payload(d.os, d.payload) for d in self.deployments(state)}
        return bool(set(present) - wanted)

    def _remove_orphans(self, state: State) -> bool:
        """Deployment trees and metadata that no state lists: an interrupted deploy or undeploy."""
        listed = set(state.deployments)
        root = self.meta / "deploy"
        if not root.is_dir():
            return False
        orphans = []
        for osdir in root.iterdir():
            ddir = osdir / "deploy"
            if not ddir.is_dir():
                continue
            for p in ddir.iterdir():
                stem = p.name.removesuffix(".json")
                if f"{osdir.name}/{stem}" not in listed or not is_valid_name(stem):
                    orphans.append(p)
        if not orphans:
            return False
        self.objects.mark_prune_pending()
        for p in orphans:
            if p.is_dir() and not p.is_symlink():
                remove_tree(p)
            else:
                p.unlink()
        self.objects.prune()
        return True

    def transaction(self, change: Callable[[State], State], rearm_default: bool = False) -> State:
        """Repair, apply `change`, commit; `rearm_default`: the new default was chosen
        explicitly, so it is counted afresh unless known good."""
        with self.locked():
            self.repair()
            state = change(self.state())
            arm = {state.default: self.config.tries} if rearm_default and state.default else None
            return self.commit(state, arm)

    # --- operations -------------------------------------------------------------

    @classmethod
    def init(
        cls,
        path: Path | str,
        os_name: str,
        bootloader: str,
        boot_dir: str = "/efi",
        root_arg: str = "root=LABEL=bootkit-root",
        timeout: int = 3,
        force: bool = False,
        settings: Mapping[str, Any] | None = None,  # further SysrootConfig fields
    ) -> Sysroot:
        sr = cls(path)
        cfg = SysrootConfig(
            os=os_name, bootloader=Bootloader.parse(bootloader), boot_dir=boot_dir,
            root_arg=root_arg, timeout=timeout,
            **(settings or {}),
        )
        if sr.config_path.exists() and not force:
            raise BootkitError(
                f"{sr.path} is already a bootkit sysroot",
                hint="use --force to change its configuration",
            )
        if not sr.path.is_dir():
            raise BootkitError(f"sysroot {sr.path} does not exist or is not a directory")
        (sr.meta / "deploy").mkdir(parents=True, exist_ok=True)
        sr.stateroot(os_name).joinpath("deploy").mkdir(parents=True, exist_ok=True)
        sr.stateroot(os_name).joinpath("var").mkdir(exist_ok=True)
        sr.path.joinpath(boot_dir.lstrip("/")).mkdir(parents=True, exist_ok=True)
        cfg.save(sr.config_path)
        fsync_dir(sr.meta)
        if force and sr.state().deployments:
            with sr.locked():
                sr.commit(sr.state())
        return sr

    def deploy(
        self,
        source: Path,
        os_name: str | None = None,
        version: str | None = None,
        kargs: Sequence[str] = (),
        make_default: bool = True,
        initramfs: str = "auto",
        progress: Callable[[int], None] | None = None,
        warn: Callable[[str], None] | None = None,
        tries: int | None = None,
    ) -> Deployment:
        """Deploy `source`; `tries`: how often its entry is tried (default: the setting)."""
        from bootkit.sysroot.deploy import deploy

        return deploy(
            self,
            Path(source),
            os_name,
            version,
            tuple(kargs),
            make_default,
            initramfs,
            progress,
            warn,
            tries,
        )

    def rollback(self) -> Deployment:
        """Make the next deployment in the menu the default; never one found bad."""

        def change(state: State) -> State:
            counters = self.boot_counters(self.deployments(state))
            ordered = self.ordered(state, counters)
            if len(ordered) < 2:
                raise BootkitError("there is no other deployment to roll back to")
            target = next((d for d in ordered[1:] if not counters.get(d.ref, Counter()).bad), None)
            if target is None:
                raise BootkitError(
                    "every other deployment failed to boot (no boot tries left)",
                    hint="'bootkit set-default ID' makes one the default and tries it again",
                )
            return state.with_changes(default=target.ref)

        return self.load(self.transaction(change, rearm_default=True).default or "")

    def set_default(self, ident: str) -> Deployment:
        """Make `ident` the default; one found bad, or still being tried, is tried afresh."""

        def change(state: State) -> State:
            return state.with_changes(default=self.resolve(ident, state).ref)

        return self.load(self.transaction(change, rearm_default=True).default or "")

    def mark_good(self, ident: str | None = None) -> tuple[Deployment, list[str]]:
        """Stop counting the boots of `ident` (default: the booted deployment).

        Only $BOOT changes, by renames and grubenv's in-place write, as the bootloader
        and systemd-bless-boot change it; so no lock, and a read-only sysroot is fine.
        """
        state = self.state()
        if ident is not None:
            dep = self.resolve(ident, state)
        else:
            booted = booted_deployment()
            dep = next((d for d in self.deployments(state) if d.path == booted), None)
            if dep is None:
                raise BootkitError(
                    "not booted into a deployment of this sysroot"
                    + (f" (bootkit={booted})" if booted else " (no bootkit= on the kernel command line)"),
                    hint="name the deployment: 'bootkit mark-good ID'",
                )
        boot = self.boot
        if not boot.has_configuration():
            raise BootkitError(
                f"no boot configuration at {boot.path}: is $BOOT mounted there?",
                hint="mount it (the ESP, for example by an /etc/fstab line) and retry",
            )
        return dep, boot.mark_good(dep)

    def set_pinned(self, ident: str, pinned: bool) -> Deployment:
        with self.locked():
            dep = self.resolve(ident)
            dep = dep.with_changes(pinned=pinned)
            dep.save(self.metadata_path(dep.os, dep.id))
            return dep

    def undeploy(self, ident: str) -> Deployment:
        with self.locked():
            self.repair()
            state = self.state()
            dep = self.resolve(ident, state)
            if dep.path == booted_deployment():
                raise BootkitError(
                    f"{dep.ref} is the booted deployment",
                    hint="boot another one first, then undeploy it",
                )
            self._drop(state, [dep])
            return dep

    def _drop(self, state: State, deps: Sequence[Deployment]) -> State:
        refs = {d.ref for d in deps}
        remaining = tuple(r for r in state.deployments if r not in refs)
        if not remaining:
            raise BootkitError(
                "refusing to remove the last deployment", hint="deploy another tree first"
            )
        default = state.default
        if default in refs:
            # The newest remaining deployment takes over.
            default = remaining[-1]
        new = self.commit(state.with_changes(deployments=remaining, default=default))
        # Only now that no entry points at them may the trees go.
        self.objects.mark_prune_pending()
        for d in deps:
            self.metadata_path(d.os, d.id).unlink(missing_ok=True)
            remove_tree(self.deployment_dir(d.os, d.id))
        self.objects.prune()
        return new

    def cleanup_candidates(self, keep: int, state: State | None = None) -> list[Deployment]:
        state = state or self.state()
        booted = booted_deployment()
        newest = sorted(self.deployments(state), key=lambda d: -d.serial)[:keep]
        keep_refs = {d.ref for d in newest} | {state.default}
        return [
            d
            for d in self.deployments(state)
            if d.ref not in keep_refs and not d.pinned and d.path != booted
        ]

    def cleanup(self, keep: int = 2) -> tuple[list[Deployment], list[Payload]]:
        with self.locked():
            self.repair()
            state = self.state()
            doomed = self.cleanup_candidates(keep, state)
            before = set(payloads.present(self.boot_path))
            if doomed:
                self._drop(state, doomed)
            else:
                self.commit(state)
            after = set(payloads.present(self.boot_path))
            return doomed, sorted(before - after, key=lambda p: p.name)

    def reclaimable_bytes(self, state: State) -> int:
        """What `cleanup` would free on $BOOT."""
        doomed = self.cleanup_candidates(2, state)
        present = payloads.present(self.boot_path)
        still = {Payload(d.os, d.payload) for d in self.deployments(state) if d not in doomed}
        return sum(size for p, size in present.items() if p not in still)

    def bootloader_update(self) -> State:
        with self.locked():
            state = self.state()
            if not state.deployments:
                self._tidy(state)
                raise BootkitError(
                    "nothing to boot yet", hint="deploy a tree first with 'bootkit deploy'"
                )
            state = self.commit(state)
            self._tidy(state)
            return state
