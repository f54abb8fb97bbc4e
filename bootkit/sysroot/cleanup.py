"""Removing deployments: one by name (`undeploy`), or all that are old (`cleanup`)."""

from __future__ import annotations

from dataclasses import dataclass

from bootkit.boot import payloads
from bootkit.boot.payloads import Payload
from bootkit.contract import booted_deployment, deployment_path
from bootkit.errors import BootkitError
from bootkit.records.deployment import Deployment
from bootkit.records.state import State
from bootkit.sysroot import inventory, leftovers, staged, transaction
from bootkit.sysroot.images.prune import prune_images
from bootkit.sysroot.layout import Sysroot, resolve_ref

# How many of the newest deployments `cleanup` keeps besides the default, the booted
# and the pinned ones, unless told otherwise.
DEFAULT_KEEP = 2


@dataclass(frozen=True)
class Cleaned:
    deployments: list[Deployment]
    payloads: list[Payload]  # kernels and initramfs images removed from $BOOT
    image_bytes: int = 0  # OCI blobs no kept deployment needs, removed


def undeploy(sr: Sysroot, ident: str) -> str:
    """Remove one deployment, its entry and the payloads nothing else uses; never the
    booted one. Returns its ref.

    Works whatever is left of it: a deployment whose metadata cannot be read, whose
    tree is gone, or that the state no longer lists.
    """
    with sr.locked():
        state = sr.state()
        boot = sr.boot
        leftovers.discard(sr, state, leftovers.shown(boot.view()))
        unlisted = [r for r in inventory.found_on_disk(sr) if r not in state.deployments]
        ref = resolve_ref(ident, [*state.deployments, *unlisted])
        if deployment_path(*ref.split("/", 1)) == booted_deployment():
            raise BootkitError(
                f"{ref} is the booted deployment", hint="boot another one first, then undeploy it"
            )
        if ref == inventory.staged_ref(sr, state):
            staged.discard(sr, "undeployed")
        elif ref in state.deployments:
            transaction.drop(sr, state, [ref])
        else:
            # Unlisted: once $BOOT holds the state's menu, no entry boots it.
            if deployment_path(*ref.split("/", 1)) in leftovers.shown(boot.view()):
                transaction.commit(sr, state)
            transaction.forget(sr, [ref])
        return ref


def candidates(sr: Sysroot, keep: int, state: State | None = None) -> list[Deployment]:
    """What `cleanup` removes: all but the `keep` newest, the default, the booted and the pinned."""
    state = state or sr.state()
    deps = sr.deployments(state)
    booted = booted_deployment()
    newest = sorted(deps, key=lambda d: -d.serial)[:keep]
    kept = {d.ref for d in newest} | {state.default}
    return [d for d in deps if d.ref not in kept and not d.pinned and d.path != booted]


def cleanup(sr: Sysroot, keep: int = DEFAULT_KEEP) -> Cleaned:
    """Remove old deployments and the payloads no entry references any more."""
    with sr.locked():
        transaction.repair(sr)
        state = sr.state()
        doomed = candidates(sr, keep, state)
        before = set(payloads.present(sr.boot_path))
        if doomed:
            transaction.drop(sr, state, [d.ref for d in doomed])
        else:
            transaction.commit(sr, state)
        after = set(payloads.present(sr.boot_path))
        freed = prune_images(sr)
        return Cleaned(doomed, sorted(before - after, key=lambda p: p.name), freed)


def reclaimable_bytes(sr: Sysroot, state: State) -> int:
    """What `cleanup` would free on $BOOT, for the hint of a deploy that does not fit."""
    doomed = candidates(sr, DEFAULT_KEEP, state)
    present = payloads.present(sr.boot_path)
    kept = [d for d in sr.deployments(state) if d not in doomed]
    still = transaction.wanted_payloads(sr, state, kept)
    return sum(size for p, size in present.items() if p not in still)
