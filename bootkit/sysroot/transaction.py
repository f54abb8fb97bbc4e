"""The transaction every change to boot state runs as.

Under the sysroot's lock, a command first repairs whatever an interrupted command
left behind, then records its new intent in `state.json`, then switches $BOOT to
match as a new generation (see `bootkit.boot.switch`), and only then removes what
the new configuration no longer lists. A power cut at any point leaves $BOOT
booting the old or the new configuration; the next command finishes the job.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence

from bootkit.base.files import remove_tree
from bootkit.boot import counting, payloads
from bootkit.boot.payloads import Payload
from bootkit.contract import is_valid_name
from bootkit.errors import BootkitError
from bootkit.records.deployment import Deployment
from bootkit.records.state import State
from bootkit.sysroot.layout import Sysroot

log = logging.getLogger("bootkit")

Change = Callable[[State], State]


def run(sr: Sysroot, change: Change, rearm_default: bool = False) -> State:
    """Repair, apply `change` to the state, commit. `rearm_default`: the new default was
    chosen explicitly, so its boots are counted afresh unless it is known good."""
    with sr.locked():
        repair(sr)
        state = change(sr.state())
        arm = {state.default: sr.config.tries} if rearm_default and state.default else None
        return commit(sr, state, arm)


def commit(sr: Sysroot, state: State, arm: Mapping[str, int] | None = None) -> State:
    """Record `state` as the intent, then switch $BOOT to it as a new generation.

    Boot counters carry over from $BOOT; new deployments and those in `arm` (ref ->
    tries) are counted afresh. A default found bad gives way to the first deployment
    in menu order that is not (see `counting.plan`).
    """
    boot = sr.boot
    state = state.with_changes(generation=state.generation + 1)
    deps = sr.deployments(state)
    plan = counting.plan(deps, state.default, boot.counters(), boot.config.tries, arm or {})
    if plan.demoted:
        state = state.with_changes(default=plan.default)
        log.info(
            "the default deployment %s failed to boot (no boot tries left); %s is the default "
            "now ('bootkit set-default %s' tries it again)",
            plan.demoted, plan.default, plan.demoted,
        )
    ordered = counting.menu_order(deps, state.default, plan.counters)
    if not ordered:
        raise BootkitError("refusing to remove the last deployment", hint="deploy another tree first")
    state.save(sr.state_path)
    boot.switch(ordered, state.generation, plan.counters)
    payloads.remove_unreferenced(boot.path, {Payload(d.os, d.payload) for d in ordered})
    return state


def repair(sr: Sysroot) -> bool:
    """Finish or undo what an interrupted command left; True if anything was done."""
    state = sr.state()
    did = False
    if state.deployments:
        boot = sr.boot
        present = payloads.present(boot.path)
        deps = sr.deployments(state)
        missing = [d for d in deps if Payload(d.os, d.payload) not in present]
        if missing:
            raise BootkitError(
                f"the kernel of deployment {missing[0].ref} is missing from {boot.path}",
                hint="redeploy it, or remove it with 'bootkit undeploy'",
            )
        wanted = {Payload(d.os, d.payload) for d in deps}
        if not boot.is_current(boot.view(), state.generation) or set(present) - wanted:
            commit(sr, state)
            did = True
    return tidy(sr, state) or did


def tidy(sr: Sysroot, state: State) -> bool:
    """Remove trees and objects that `state` no longer lists.

    Only once $BOOT matches `state`: until then an entry of the old configuration
    may still boot a tree that `state` has dropped.
    """
    did = _remove_orphans(sr, state)
    if sr.objects.prune_pending():
        sr.objects.prune()
        did = True
    # Temp files of an interrupted atomic write (state, config, caches).
    for stray in sr.meta.glob(".*.bootkit-tmp"):
        stray.unlink()
        did = True
    return did


def drop(sr: Sysroot, state: State, deps: Sequence[Deployment]) -> State:
    """Switch to a configuration without `deps`, then remove their trees."""
    refs = {d.ref for d in deps}
    remaining = tuple(r for r in state.deployments if r not in refs)
    if not remaining:
        raise BootkitError("refusing to remove the last deployment", hint="deploy another tree first")
    default = state.default
    if default in refs:
        default = remaining[-1]  # the newest remaining deployment takes over
    new = commit(sr, state.with_changes(deployments=remaining, default=default))
    # Only now that no entry points at them may the trees go.
    sr.objects.mark_prune_pending()
    for d in deps:
        sr.metadata_path(d.os, d.id).unlink(missing_ok=True)
        remove_tree(sr.tree(d))
    sr.objects.prune()
    return new


def _remove_orphans(sr: Sysroot, state: State) -> bool:
    """Deployment trees and metadata that no state lists: an interrupted deploy or undeploy."""
    listed = set(state.deployments)
    root = sr.meta / "deploy"
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
    sr.objects.mark_prune_pending()
    for p in orphans:
        if p.is_dir() and not p.is_symlink():
            remove_tree(p)
        else:
            p.unlink()
    sr.objects.prune()
    return True
