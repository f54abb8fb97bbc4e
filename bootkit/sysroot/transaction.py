"""The transaction every change to boot state runs as.

Under the sysroot's lock, a command first repairs whatever an interrupted command
left behind, then records its new intent in `state.json`, then switches $BOOT to
match as a new generation (see `bootkit.boot.switch`), and only then removes what
the new configuration no longer lists. A power cut at any point leaves $BOOT
booting the old or the new configuration; the next command finishes the job.

No entry is ever written for a deployment that cannot boot: one whose tree or a
boot file is missing stays listed in the state but out of the menu, with a
warning that says how to repair or remove it, until it can boot again.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence

from bootkit.base.files import remove_path, remove_tree
from bootkit.boot import counting, payloads
from bootkit.boot.bootdir import BootDir
from bootkit.boot.counting import Counter
from bootkit.boot.payloads import Payload
from bootkit.boot.switch import BootView
from bootkit.errors import BootkitError
from bootkit.records.deployment import Deployment
from bootkit.records.state import State
from bootkit.sysroot import inventory, leftovers
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


def commit(
    sr: Sysroot, state: State, arm: Mapping[str, int] | None = None, view: BootView | None = None
) -> State:
    """Record `state` as the intent, then switch $BOOT to it, writing the entries that
    are new as a new generation; when $BOOT already holds exactly that menu, its
    generation stays and nothing is rewritten.

    Boot counters carry over from $BOOT; new deployments and those in `arm` (ref ->
    tries) are counted afresh. A default found bad gives way to the first deployment
    in menu order that is not (see `counting.plan`). `view`: $BOOT as read under the
    same lock, so that a large menu is read and parsed once per transaction.
    """
    boot = sr.boot
    view = view or boot.view()
    still = tuple(r for r in state.in_flight if r not in state.deployments and _on_disk(sr, r))
    state = state.with_changes(in_flight=still)
    deps = sr.deployments(state)
    menu = bootable(sr, deps)
    plan = counting.plan(menu, state.default, boot.counters(view), boot.config.tries, arm or {})
    if plan.demoted:
        state = state.with_changes(default=plan.default)
        log.info(
            "the default deployment %s failed to boot (no boot tries left); %s is the default "
            "now ('bootkit set-default %s' tries it again)",
            plan.demoted, plan.default, plan.demoted,
        )
    ordered = counting.menu_order(menu, state.default, plan.counters)
    shown = view.mark
    if shown is not None and boot.holds(view, ordered, shown, plan.counters):
        # The state's generation is the one $BOOT shows, also after a raise that
        # turned out to change nothing (see `bootkit.sysroot.kargs`).
        state = state.with_changes(generation=shown)
        state.save(sr.state_path)
        # Settings outside the menu (systemd-boot's timeout) may still have changed.
        boot.backend.write_static(boot.path, boot.config)
    else:
        state = state.with_changes(generation=_next_generation(boot, view, state, ordered,
                                                               plan.counters))
        state.save(sr.state_path)
        boot.switch(ordered, state.generation, plan.counters, view)
    # The payloads of deployments left out of the menu stay, to be repaired, and so
    # does a staged deployment's.
    payloads.remove_unreferenced(boot.path, wanted_payloads(sr, state, deps))
    return state


def _next_generation(
    boot: BootDir, view: BootView, state: State, ordered: Sequence[Deployment],
    counters: Mapping[str, Counter],
) -> int:
    """The generation of a switch: past every one used, unless the switch only removes
    files (what an interrupted one left), which keeps the one $BOOT shows."""
    shown = view.mark
    if shown is not None and not boot.needs_writes(view, ordered, shown, counters):
        return shown
    return max(state.generation, shown or 0) + 1


def bootable(sr: Sysroot, deps: Sequence[Deployment]) -> list[Deployment]:
    """`deps` but those that cannot boot, each named in a warning; refuses when none is left."""
    if not deps:
        raise BootkitError("refusing to remove the last deployment", hint="deploy another tree first")
    boot = sr.boot_path
    menu, left_out = [], []
    seen: dict[tuple[Payload, tuple[str, ...]], list[str]] = {}
    for dep in deps:
        why = inventory.why_unbootable(sr, dep, boot, seen)
        if why is None:
            menu.append(dep)
            continue
        left_out.append(f"{dep.ref}: {why}")
        if left_out[-1] in sr.told:
            continue
        sr.told.add(left_out[-1])
        way_out = ("'bootkit undeploy {0}' removes what is left of it" if "tree" in why else
                   "'bootkit fsck --repair' copies its boot files again from its tree, "
                   "'bootkit undeploy {0}' removes it")
        log.warning("%s is left out of the boot menu: %s; %s", dep.ref, why,
                    way_out.format(dep.ref))
    if not menu:
        raise BootkitError(
            f"no deployment can boot ({'; '.join(left_out)})",
            hint=f"is $BOOT mounted at {boot}? If so, 'bootkit fsck --repair' copies the boot "
            "files again from the deployments' trees",
        )
    return menu


def repair(sr: Sysroot) -> bool:
    """Finish or undo what an interrupted command left; True if anything was done.

    Leftovers go first, so that a full disk gets the room the rest needs.
    """
    state = sr.state()
    boot = sr.boot
    view = boot.view()
    did = bool(leftovers.discard(sr, state, leftovers.shown(view)))
    if state.deployments:
        deps = sr.deployments(state)
        present = payloads.present(boot.path)
        wanted = wanted_payloads(sr, state, deps)
        if not wanted & set(present):
            raise BootkitError(
                f"none of the deployments' boot files are in {boot.path}",
                hint="mount $BOOT there, then run the command again; if the files are gone, "
                "'bootkit fsck --repair' copies them again from the deployments' trees",
            )
        menu = {d.path for d in deps if inventory.why_unbootable(sr, d, boot.path) is None}
        if (
            not sr.state_path.exists()
            or not boot.is_current(view, state.generation)
            or set(present) - wanted
            or leftovers.shown(view) != menu
        ):
            if not sr.state_path.exists():
                log.warning("%s was missing; it is made again from the deployments on disk",
                            sr.state_path)
            state = commit(sr, state, view=view)
            did = True
            did = bool(leftovers.discard(sr, state)) or did
    return did


def wanted_payloads(sr: Sysroot, state: State, deps: Sequence[Deployment]) -> set[Payload]:
    """The payloads $BOOT keeps: those of `deps` and of a staged deployment."""
    wanted = {Payload(d.os, d.payload) for d in deps}
    staged = inventory.staged_payload(sr, state)
    return wanted | {staged} if staged is not None else wanted


def regenerate(sr: Sysroot) -> State:
    """Write the boot configuration for the recorded state again, as a new generation
    unless $BOOT already holds exactly that configuration (see `commit`)."""
    with sr.locked():
        state = sr.state()
        view = sr.boot.view()
        leftovers.discard(sr, state, leftovers.shown(view))
        if not state.deployments:
            raise BootkitError("nothing to boot yet", hint="deploy a tree first with 'bootkit deploy'")
        state = commit(sr, state, view=view)
        leftovers.discard(sr, state)
        return state


def drop(sr: Sysroot, state: State, refs: Sequence[str]) -> State:
    """Switch to a configuration without `refs`, then remove their trees and metadata.

    Their metadata need not be readable, nor their trees present.
    """
    remaining = tuple(r for r in state.deployments if r not in refs)
    if not remaining:
        raise BootkitError("refusing to remove the last deployment", hint="deploy another tree first")
    default = state.default
    if default in refs or default not in remaining:
        default = remaining[-1]  # the newest remaining deployment takes over
    in_flight = (*state.in_flight, *(r for r in refs if r not in state.in_flight))
    new = commit(sr, state.with_changes(deployments=remaining, default=default, in_flight=in_flight))
    # Only now that no entry points at them may the trees go.
    forget(sr, refs)
    return new


def forget(sr: Sysroot, refs: Sequence[str]) -> None:
    """Remove the trees and metadata of `refs`, which no state lists and no entry boots."""
    sr.objects.mark_prune_pending()
    for ref in refs:
        os_name, _, dep_id = ref.partition("/")
        remove_path(sr.metadata_path(os_name, dep_id))
        tree = sr.deployment_dir(os_name, dep_id)
        if tree.is_dir() and not tree.is_symlink():
            remove_tree(tree)
        else:
            remove_path(tree)
    sr.objects.prune()


def _on_disk(sr: Sysroot, ref: str) -> bool:
    os_name, _, dep_id = ref.partition("/")
    return any(
        p.is_symlink() or p.exists()
        for p in (sr.metadata_path(os_name, dep_id), sr.deployment_dir(os_name, dep_id))
    )
