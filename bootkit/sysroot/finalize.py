"""`bootkit finalize-staged`: the staged deployment joins the boot menu, at shutdown.

Under the sysroot's lock, its /etc is merged from the booted deployment as it is
now (so that changes made after staging carry over), the state lists it, and
$BOOT switches to it in one transaction (`transaction.commit`): a power cut leaves
the old or the new menu, as with every switch.

When that fails, nothing switches: the old generation stays on $BOOT, the staged
deployment is removed as far as possible, and the reason is kept on $BOOT in
`bootkit/finalize-failed.json` (written into the padded marker in place, since
$BOOT is often full then), where `bootkit status` and the
bootkit-finalize-failed.service unit of the next boot show it.
"""

from __future__ import annotations

import contextlib
import logging
import time

from bootkit.base.files import remove_tree
from bootkit.boot.entries import options_for
from bootkit.boot.payloads import Payload
from bootkit.errors import BootkitError, from_os_error
from bootkit.records import staged as records
from bootkit.records.deployment import Deployment
from bootkit.records.staged import FinalizeFailure, StagedRecord
from bootkit.records.state import State
from bootkit.sysroot import inventory, leftovers, mergesource, staged, transaction
from bootkit.sysroot.layout import Sysroot

log = logging.getLogger("bootkit")


def finalize(sr: Sysroot, now: bool = False, at_shutdown: bool = False) -> Deployment | None:
    """List the staged deployment of `sr` and switch $BOOT to it; None if none is staged.

    A locked one is refused unless `now`; `at_shutdown` it is discarded instead.
    """
    try:
        found = records.load_run_record()
    except BootkitError as err:
        # What it named is a leftover now, which the next command removes.
        log.warning("%s; it is removed", err.message)
        records.remove_run_record()
        return None
    if found is None or not found.is_for(sr.path):
        return None  # nothing staged: no lock taken, nothing written
    with sr.locked():
        state = sr.state()
        ref = inventory.staged_ref(sr, state)
        rec = records.load_run_record()
        if ref is None or rec is None:
            _forget_stale(sr)
            return None
        if rec.locked and not now:
            _locked(sr, rec, at_shutdown)
            return None
        dep = sr.load(ref)
        try:
            transaction.repair(sr)
            state = sr.state()
            source = mergesource.merge_source(sr, state, dep.os)
            _merge_etc(sr, dep, source)
            dep = _take_kargs(sr, dep, source, rec)
            _list(sr, state, dep, rec)
        except Exception as err:  # any failure is recorded the same way
            raise _failed(sr, state, dep, err) from None
        records.remove_run_record()
        with contextlib.suppress(OSError):  # tidying: --boot removes a marker left over
            records.remove_marker(sr.boot_path)
        with contextlib.suppress(OSError):
            staged.forget_failure(sr)
        return dep


def _forget_stale(sr: Sysroot) -> None:
    """A run record whose deployment is no longer in flight names nothing to finalize."""
    records.remove_run_record()
    records.remove_marker(sr.boot_path)


def _locked(sr: Sysroot, rec: StagedRecord, at_shutdown: bool) -> None:
    if at_shutdown:
        staged.discard(sr, "it is locked ('bootkit deploy --lock'), so it was not finalized")
        log.warning("the staged deployment %s was locked and is discarded at shutdown", rec.ref)
        return
    raise BootkitError(
        f"the staged deployment {rec.ref} is locked",
        hint="'bootkit finalize-staged --now' finalizes it at once; "
        "'bootkit finalize-staged --unlock' lets the next shutdown finalize it",
    )


def _merge_etc(sr: Sysroot, dep: Deployment, source: Deployment | None) -> None:
    """The staged tree's /etc: its defaults plus the admin's changes, as they are now."""
    tree = sr.tree(dep)
    dest = tree / "etc"
    if dest.is_dir() and not dest.is_symlink():
        remove_tree(dest)  # what an earlier attempt left
    mergesource.build_etc(sr, source, tree, dest)


def _take_kargs(sr: Sysroot, dep: Deployment, source: Deployment | None,
                rec: StagedRecord) -> Deployment:
    """The admin's kernel arguments as they are now, like /etc: a 'bootkit kargs' change
    made after staging carries over. Not when the deploy named them, nor into a UKI,
    whose command line was signed when it was staged."""
    if rec.kargs_given or source is None or source.kargs == dep.kargs:
        return dep
    if dep.uki:
        log.warning("%s boots a UKI with the kernel arguments of when it was staged (%s); "
                    "deploy again for those of %s", dep.ref, " ".join(dep.kargs) or "none",
                    source.ref)
        return dep
    new = dep.with_changes(kargs=source.kargs)
    options_for(sr.config, new)  # the whole command line, checked before it is written
    new.save(sr.metadata_path(new.os, new.id))  # still in flight: no entry reads it yet
    return new


def _list(sr: Sysroot, state: State, dep: Deployment, rec: StagedRecord) -> None:
    new_state = state.with_changes(
        serial=max(state.serial, dep.serial),
        deployments=(*state.deployments, dep.ref),
        default=dep.ref if rec.make_default or state.default is None else state.default,
    )
    arm = {dep.ref: rec.tries} if rec.tries is not None else None
    transaction.commit(sr, new_state, arm)


def _failed(sr: Sysroot, before: State, dep: Deployment, err: Exception) -> BootkitError:
    """Undo a finalize that failed, keep why on $BOOT; the error to raise."""
    if isinstance(err, OSError):
        err = from_os_error(err)
    reason = err.message if isinstance(err, BootkitError) else str(err) or type(err).__name__
    boot = sr.boot_path
    with contextlib.suppress(BootkitError, OSError):
        if dep.path in leftovers.shown(sr.boot.view()):
            # The new entries are visible and the state lists them: the next command
            # finishes the switch rather than undoing it.
            records.remove_run_record()
            records.remove_marker(boot)
            return BootkitError(
                f"switching to the staged deployment {dep.ref} was interrupted: {reason}",
                hint="run 'bootkit bootloader update' to finish it",
            )
    failure = FinalizeFailure(dep.ref, dep.version, time.time(), reason)
    try:
        records.record_failure(boot, failure)
    except OSError as write_err:
        log.warning("cannot record the failure on $BOOT (%s): %s", write_err, reason)
    with contextlib.suppress(BootkitError, OSError):
        records.remove_run_record()
        before.save(sr.state_path)  # the intent is the old menu again
        staged.remove_traces(sr, dep.ref, Payload(dep.os, dep.payload))
        transaction.repair(sr)  # tidies what the failed switch wrote, once there is room
    return BootkitError(
        f"finalizing the staged deployment {dep.ref} failed, nothing was switched: {reason}",
        hint=f"the reason is kept in {records.failure_path(boot)}; deal with it (a full "
        "$BOOT: 'bootkit cleanup' frees space) and deploy again; 'bootkit finalize-staged "
        "--forget-failure' clears the record",
    )
