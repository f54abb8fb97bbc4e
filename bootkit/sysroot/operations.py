"""Changes to an existing sysroot other than deploying and removing: set it up, choose the
default, roll back, pin, mark a boot good, regenerate the boot configuration."""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from pathlib import Path

from bootkit.base.files import fsync_dir
from bootkit.boot.counting import Counter
from bootkit.contract import booted_deployment, deployment_path
from bootkit.errors import BootkitError
from bootkit.records.config import SysrootConfig
from bootkit.records.deployment import Deployment
from bootkit.records.state import State
from bootkit.secureboot import signing
from bootkit.sysroot import staged, transaction
from bootkit.sysroot.booted import writable_boot
from bootkit.sysroot.layout import Sysroot

log = logging.getLogger("bootkit")


def init(sr: Sysroot, config: SysrootConfig, force: bool = False) -> Sysroot:
    """Lay out `sr` for deployments and record `config`; `force` changes an existing one.

    A changed configuration is applied to the boot entries at once. A UKI carries its
    command line inside, signed, so UKI deployments keep the old root argument until
    they are deployed again; each is named in a warning.
    """
    old = _recorded_config(sr) if force else None
    if sr.config_path.exists() and not force:
        raise BootkitError(
            f"{sr.path} is already a bootkit sysroot",
            hint="to change its configuration, initialize it again and force it",
        )
    if not sr.path.is_dir():
        raise BootkitError(f"sysroot {sr.path} does not exist or is not a directory")
    sr.stateroot(config.os).joinpath("deploy").mkdir(parents=True, exist_ok=True)
    sr.stateroot(config.os).joinpath("var").mkdir(exist_ok=True)
    sr.path.joinpath(config.boot_dir.lstrip("/")).mkdir(parents=True, exist_ok=True)
    config.save(sr.config_path)
    fsync_dir(sr.meta)
    if force and sr.state().deployments:
        with sr.locked():
            transaction.commit(sr, sr.state())
    if old is not None and old.root_arg != config.root_arg:
        _warn_stale_ukis(sr, old.root_arg)
    return sr


def _recorded_config(sr: Sysroot) -> SysrootConfig | None:
    try:
        return sr.config
    except (BootkitError, OSError):
        return None  # not a sysroot yet, or a damaged record that init replaces


def _warn_stale_ukis(sr: Sysroot, old_root_arg: str) -> None:
    stale = [d.ref for d in sr.deployments() if d.uki]
    if stale:
        one = len(stale) == 1
        log.warning(
            "%s boot%s a UKI whose own command line still says %s; deploy %s again for the "
            "new root argument",
            ", ".join(stale), "s" if one else "", old_root_arg, "it" if one else "them",
        )


def rollback(sr: Sysroot) -> Deployment:
    """Make the next deployment in the menu the default; never one found bad.

    A staged deployment is discarded: it would otherwise undo the rollback at shutdown.
    """

    def change(state: State) -> State:
        counters = sr.boot_counters(sr.deployments(state))
        ordered = sr.ordered(state, counters)
        if len(ordered) < 2:
            raise BootkitError("there is no other deployment to roll back to")
        target = next((d for d in ordered[1:] if not counters.get(d.ref, Counter()).bad), None)
        if target is None:
            raise BootkitError(
                "every other deployment failed to boot (no boot tries left)",
                hint="'bootkit set-default ID' makes one the default and tries it again",
            )
        staged.discard(sr, "a rollback goes back, not forward")
        return state.with_changes(default=target.ref)

    return sr.load(transaction.run(sr, change, rearm_default=True).default or "")


def set_default(sr: Sysroot, ident: str) -> Deployment:
    """Make `ident` the default; one found bad, or still being tried, is tried afresh."""

    def change(state: State) -> State:
        return state.with_changes(default=sr.resolve(ident, state).ref)

    return sr.load(transaction.run(sr, change, rearm_default=True).default or "")


def set_pinned(sr: Sysroot, ident: str, pinned: bool) -> Deployment:
    """Keep `ident` through cleanup, or let cleanup remove it again."""
    with sr.locked():
        dep = replace(sr.resolve(ident), pinned=pinned)
        dep.save(sr.metadata_path(dep.os, dep.id))
        return dep


def mark_good(sr: Sysroot, ident: str | None = None) -> tuple[Deployment, list[str]]:
    """Stop counting the boots of `ident` (default: the booted deployment).

    Only $BOOT changes, by renames and grubenv's in-place write, as the bootloader
    and systemd-bless-boot change it; so no lock, and a read-only sysroot is fine.
    A read-only $BOOT is made writable for this process alone while it does so.
    """
    state = sr.state()
    dep = sr.resolve(ident, state) if ident is not None else _booted(sr, state)
    boot = sr.boot
    if not boot.has_configuration():
        raise BootkitError(
            f"no boot configuration at {boot.path}: is $BOOT mounted there?",
            hint="mount it (the ESP, for example by an /etc/fstab line) and retry",
        )
    with writable_boot(sr):
        return dep, boot.mark_good(dep)


def _booted(sr: Sysroot, state: State) -> Deployment:
    booted = booted_deployment()
    ref = next((r for r in state.deployments if deployment_path(*r.split("/", 1)) == booted), None)
    if ref is None:
        why = f" (bootkit={booted})" if booted else " (no bootkit= on the kernel command line)"
        raise BootkitError(
            f"not booted into a deployment of this sysroot{why}",
            hint="name the deployment: 'bootkit mark-good ID'",
        )
    return sr.load(ref)


@dataclass(frozen=True)
class Installed:
    bootloader: str
    path: Path
    signed_for: str | None  # the signing certificate's subject


def install_bootloader(sr: Sysroot) -> Installed:
    """Put the configured bootloader on $BOOT, signed when the sysroot has a key."""
    boot = sr.boot
    signer = signing.configured_signer(boot.config)
    with sr.locked():
        path = boot.install_bootloader(signer)
    return Installed(boot.config.bootloader, path, signer.subject if signer else None)


def bootloader_update(sr: Sysroot) -> State:
    """Write the boot configuration for the recorded state again, as a new generation
    unless $BOOT already holds exactly that configuration."""
    return transaction.regenerate(sr)
