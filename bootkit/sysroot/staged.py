"""Staged deployments: on disk now, in the boot menu from the next shutdown on.

A staged deploy does everything a deploy does but the switch: the tree, its
metadata and its payload on $BOOT are in place, and the state records the
deployment as in flight without listing it. A record in the run directory (see
`bootkit.records.staged`) keeps every other command from taking it for a leftover
until `bootkit finalize-staged` lists it at shutdown (`bootkit.sysroot.finalize`).
The run directory is a tmpfs: after a reboot without finalizing nothing names
the staged deployment any more, and `bootkit finalize-staged --boot` removes it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import time

from bootkit.base.files import fsync_dir, remove_tree
from bootkit.boot.payloads import Payload
from bootkit.contract import booted_deployment, deployment_path
from bootkit.errors import BootkitError
from bootkit.records import staged as records
from bootkit.records.deployment import Deployment
from bootkit.records.staged import StagedRecord
from bootkit.records.state import State
from bootkit.sysroot import inventory, leftovers, transaction
from bootkit.sysroot.booted import writable_boot
from bootkit.sysroot.layout import Sysroot

log = logging.getLogger("bootkit")


def booted_here(sr: Sysroot, state: State) -> str | None:
    """The ref of the running system, if it is one of `sr`'s listed deployments."""
    booted = booted_deployment()
    if booted is None:
        return None
    return next((r for r in state.deployments if deployment_path(*r.split("/", 1)) == booted), None)


def should_stage(sr: Sysroot, state: State, requested: bool | None, lock: bool) -> bool:
    """Whether a deploy stages: as requested, else when run inside a deployment of `sr`
    (a running system is updated at shutdown, a sysroot from outside at once)."""
    stage = requested if requested is not None else booted_here(sr, state) is not None
    if lock and not stage:
        raise BootkitError(
            "only a staged deployment can be locked; this deploy would switch at once, "
            "since it does not run inside a booted deployment of this sysroot",
            hint="add --stage to stage it, or drop --lock",
        )
    return stage


def record(sr: Sysroot, dep: Deployment, make_default: bool, tries: int | None,
           lock: bool, kargs_given: bool = False) -> StagedRecord:
    """Record `dep`, settled and in flight, as staged: the marker on $BOOT first, then
    the run record that keeps it (a marker alone is removed at the next boot)."""
    rec = StagedRecord(
        sysroot=str(sr.path.resolve()), ref=dep.ref, make_default=make_default, tries=tries,
        locked=lock, staged_at=time.time(), booted=booted_here(sr, sr.state()),
        kargs_given=kargs_given,
    )
    boot = sr.boot_path
    records.write_marker(boot, rec)
    try:
        records.save_run_record(rec)
    except BaseException:
        with contextlib.suppress(OSError):
            records.remove_marker(boot)
        raise
    return rec


def current(sr: Sysroot, state: State | None = None) -> StagedRecord | None:
    """The live staged record of `sr`, if a deployment is staged on it."""
    if inventory.staged_ref(sr, state or sr.state()) is None:
        return None
    return records.load_run_record()


def discard(sr: Sysroot, why: str) -> str | None:
    """Remove the staged deployment of `sr` (under its lock), saying `why`; its ref."""
    state = sr.state()
    ref = inventory.staged_ref(sr, state)
    if ref is None:
        return None
    payload = inventory.staged_payload(sr, state)
    records.remove_run_record()  # from here on, it is a leftover like any other
    remove_traces(sr, ref, payload)
    records.remove_marker(sr.boot_path)
    log.info("the staged deployment %s is discarded: %s", ref, why)
    return ref


def remove_traces(sr: Sysroot, ref: str, payload: Payload | None) -> None:
    """Remove the tree, metadata and payload of `ref`, which no state lists and no
    entry boots, and stop recording it as in flight."""
    transaction.forget(sr, [ref])
    state = sr.state()
    if payload is not None and _unused(sr, state, payload):
        folder = payload.dir(sr.boot_path)
        if folder.is_dir():
            remove_tree(folder)
            fsync_dir(folder.parent)
    if ref in state.in_flight:
        in_flight = tuple(r for r in state.in_flight if r != ref)
        state.with_changes(in_flight=in_flight).save(sr.state_path)


def _unused(sr: Sysroot, state: State, payload: Payload) -> bool:
    deps, unreadable = inventory.readable(sr, state.deployments)
    # Metadata that cannot be read may name it: keep it, cleanup decides later.
    return not unreadable and all(Payload(d.os, d.payload) != payload for d in deps)


def forget_failure(sr: Sysroot) -> bool:
    """Remove the record of a failed finalize from $BOOT; False if there was none."""
    # It takes no lock (finalizing calls it under its own), so it makes a read-only
    # $BOOT writable for itself.
    with writable_boot(sr), contextlib.suppress(BootkitError):
        return records.forget_failure(sr.boot_path)
    return False


def unlock(sr: Sysroot) -> StagedRecord | None:
    """Let finalizing go ahead: clear the lock of the staged deployment, if any."""
    with sr.locked():
        rec = current(sr)
        if rec is not None and rec.locked:
            rec = dataclasses.replace(rec, locked=False)
            records.save_run_record(rec)
        return rec


def cleanup_at_boot(sr: Sysroot) -> str | None:
    """Remove what a staged deploy left when the machine went down without finalizing it.

    Cheap when there is nothing: it reads the state, the run record and the marker,
    and takes the lock only when one of them shows something to remove. Returns the
    ref of the deployment that was not applied, if one is known.
    """
    boot = sr.boot_path
    marker = records.load_marker(boot)
    recorded = State.load(sr.state_path)
    leaving = [r for r in recorded.in_flight if r not in recorded.deployments] if recorded else []
    if marker is None and not leaving:
        return None
    with sr.locked():
        state = sr.state()
        if inventory.staged_ref(sr, state) is not None:
            return None  # staged since this boot: finalizing it is still to come
        marker = records.load_marker(boot)
        applied = marker is None or marker.ref in state.deployments
        # Only a deployment the state has in flight is removed, whatever a marker says.
        ref = marker.ref if marker is not None and marker.ref in state.in_flight else None
        ref = None if applied else ref
        payload = _payload_of(sr, ref) if ref is not None else None
        if marker is not None and not applied:
            when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(marker.staged_at))
            log.warning("an update staged at %s (%s) was not applied: the system stopped "
                        "without finalizing it", when, marker.ref)
        leftovers.discard(sr, state, leftovers.shown(sr.boot.view()))
        if ref is not None:
            remove_traces(sr, ref, payload)
        records.remove_marker(boot)
        return ref


def _payload_of(sr: Sysroot, ref: str) -> Payload | None:
    try:
        dep = sr.load(ref)
    except BootkitError:
        return None
    return Payload(dep.os, dep.payload) if dep.payload else None
