"""Commands that manage deployments and the boot configuration."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from bootkit.cli.common import byte_progress, open_sysroot, print_json, sysroot_option, warn
from bootkit.errors import BootkitError
from bootkit.records.config import DEFAULT_TRIES, Bootloader
from bootkit.secureboot import signing
from bootkit.sysroot.deploy import INITRAMFS_MODES
from bootkit.sysroot.importers import open_source
from bootkit.sysroot.transaction import DeploymentStatus, Sysroot

_key_file = click.Path(exists=True, dir_okay=False, path_type=Path)


def uki_options(f: Callable[..., Any]) -> Callable[..., Any]:
    """--uki and the signing key, passed on as `uki`, `signing_key`, `signing_cert` and
    `passphrase_file`: the arguments of `signing.boot_settings`."""
    for option in reversed(
        [
            click.option(
                "--uki",
                is_flag=True,
                help="Boot each deployment as a Unified Kernel Image: kernel, initramfs, "
                "os-release and the command line naming the deployment in one EFI binary.",
            ),
            click.option(
                "--signing-key",
                type=_key_file,
                help="Sign every UKI (and systemd-boot when bootkit installs it) for "
                "Secure Boot with this private key (PEM or DER); needs --uki.",
            ),
            click.option(
                "--signing-cert",
                type=_key_file,
                help="The certificate of the signing key; the firmware's db must trust it.",
            ),
            click.option(
                "--passphrase-file",
                type=_key_file,
                help="File whose first line decrypts the signing key; its path is "
                "recorded (else $BOOTKIT_KEY_PASSPHRASE is read at each deploy).",
            ),
        ]
    ):
        f = option(f)
    return f


@click.command()
@sysroot_option
@click.option("--os", "os_name", required=True, help="Name of the OS (the stateroot), e.g. fedora.")
@click.option(
    "--bootloader",
    type=click.Choice([b.value for b in Bootloader]),
    required=True,
    help="Which boot configuration to write: BLS entries + loader.conf (systemd-boot), "
    "BLS entries + grub.cfg (grub), or BLS entries only (none).",
)
@click.option(
    "--boot-dir",
    default="/efi",
    show_default=True,
    help="Where $BOOT (the ESP, or an ext4 /boot partition) is mounted, under the sysroot.",
)
@click.option(
    "--root-arg",
    default="root=LABEL=bootkit-root",
    show_default=True,
    help="The kernel argument that finds the physical root at boot.",
)
@click.option("--timeout", default=3, show_default=True, help="Boot menu timeout in seconds.")
@click.option("--force", is_flag=True, help="Change the configuration of an existing sysroot.")
@click.option(
    "--tries",
    type=click.IntRange(min=0),
    default=DEFAULT_TRIES,
    show_default=True,
    help="Boot counting: how often a new deployment's entry is tried without being marked "
    "good before the bootloader falls back to the previous one; 0 turns counting off.",
)
@uki_options
def init(
    sysroot: Path | None,
    os_name: str,
    bootloader: str,
    boot_dir: str,
    root_arg: str,
    timeout: int,
    force: bool,
    tries: int,
    uki: bool,
    signing_key: Path | None,
    signing_cert: Path | None,
    passphrase_file: Path | None,
) -> None:
    """Lay out a sysroot for deployments and record its boot configuration.

    Boot counting (--tries) follows the UAPI Automatic Boot Assessment scheme: a new
    entry is tried that often; once the system is up, systemd-bless-boot,
    bootkit-mark-good or 'bootkit mark-good' marks it good; if that never happens,
    systemd-boot or GRUB boots the previous deployment by itself.

    With --uki, each deployment made from then on boots as a Unified Kernel Image
    whose embedded command line names it; with a signing key, deploy signs each
    UKI, so under Secure Boot kernel, initramfs and command line are all verified.
    """
    settings = {
        **signing.boot_settings(uki, signing_key, signing_cert, passphrase_file),
        "tries": tries,
    }
    old_root_arg = _recorded_root_arg(sysroot or Path("/")) if force else None
    sr = Sysroot.init(
        sysroot or Path("/"),
        os_name,
        bootloader,
        boot_dir,
        root_arg,
        timeout,
        force,
        settings=settings,
    )
    extra = "; UKIs" if uki else ""
    extra += ", signed" if signing_key else ""
    click.echo(
        f"Initialized {sr.path} for {os_name}; bootloader {bootloader}; $BOOT at {boot_dir}{extra}"
    )
    if old_root_arg is not None and old_root_arg != root_arg:
        # A UKI carries its command line inside, signed: only a new deploy changes it.
        stale = [d.ref for d in sr.deployments() if d.uki]
        if stale:
            warn(
                f"{', '.join(stale)} boot{'s' if len(stale) == 1 else ''} a UKI whose own "
                f"command line still says {old_root_arg}; deploy {'it' if len(stale) == 1 else 'them'}"
                " again for the new root argument"
            )


def _recorded_root_arg(sysroot: Path) -> str | None:
    try:
        return Sysroot(sysroot).config.root_arg
    except (BootkitError, OSError, ValueError):
        return None  # not a sysroot yet, or a damaged record: init says so


@click.command()
@sysroot_option
@click.argument("source", type=click.Path(exists=False, path_type=Path))
@click.option("--os", "os_name", help="Stateroot to deploy into (default: the one from init).")
@click.option("--version", help="Version shown in the menu (default: VERSION_ID from os-release).")
@click.option(
    "--karg",
    "kargs",
    multiple=True,
    help="Extra kernel argument; repeat for more. Default: those of the current "
    "deployment of the same OS.",
)
@click.option(
    "--no-default", is_flag=True, help="Add the deployment without making it the default."
)
@click.option(
    "--initramfs",
    type=click.Choice(INITRAMFS_MODES),
    default="auto",
    show_default=True,
    help="Use the tree's own initramfs (tree), build one with bootkit (build), or the "
    "tree's when it has one (auto).",
)
@click.option(
    "--tries",
    type=click.IntRange(min=0),
    help="How often its entry is tried before the bootloader falls back to the previous "
    "deployment (default: the sysroot's setting from 'bootkit init --tries'); 0: not counted.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the new deployment as JSON.")
def deploy(
    sysroot: Path | None,
    source: Path,
    os_name: str | None,
    version: str | None,
    kargs: tuple[str, ...],
    no_default: bool,
    initramfs: str,
    tries: int | None,
    as_json: bool,
) -> None:
    """Deploy SOURCE, a root tree (directory, or tar archive: plain, gzip, xz, zstd).

    The kernel is taken from usr/lib/modules/<kver>/vmlinuz (initramfs.img beside
    it) or boot/vmlinuz-<kver> (with boot/initrd.img-<kver>). Files identical to ones
    already deployed are stored once. The new /etc is the tree's defaults (usr/etc,
    or its /etc) plus the changes made in the current deployment's /etc.

    /var is shared by all deployments of an OS: it is filled from the tree's /var
    only while it is empty; later deploys never touch it.
    """
    sr = open_sysroot(sysroot)
    with byte_progress(
        f"Importing {source.name}", open_source(source).size() if source.exists() else 0
    ) as bar:
        dep = sr.deploy(
            source, os_name, version, kargs, not no_default, initramfs, bar, warn, tries=tries
        )
    if as_json:
        print_json(_dep_json(sr, dep.ref))
    else:
        role = "default" if not no_default else "not default"
        click.echo(
            f"Deployed {dep.ref} ({dep.title} {dep.version}, kernel {dep.kernel_version}); {role}"
        )


def _dep_json(sr: Sysroot, ref: str) -> dict:
    for s in sr.status():
        if s.deployment.ref == ref:
            return _status_json(s)
    return {}


def _status_json(s: DeploymentStatus) -> dict:
    d = s.deployment
    return {
        "id": d.id,
        "os": d.os,
        "version": d.version,
        "title": d.title,
        "kernel_version": d.kernel_version,
        "default": s.default,
        "booted": s.booted,
        "pinned": d.pinned,
        "entry": s.entry,
        # Boot assessment: "good", "indeterminate" (tries_left more tries) or "bad".
        "boot": s.counter.state,
        "tries_left": s.counter.left,
        "tries_done": s.counter.done,
        "path": d.path,
        "kargs": list(d.kargs),
        "created": d.created,
    }


@click.command()
@sysroot_option
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def status(sysroot: Path | None, as_json: bool) -> None:
    """List deployments in boot menu order: the default first, then newest first.

    Deployments found bad (tried until no boot tries were left, never marked good)
    come last, as the bootloader lists them. For each, 'boot' says whether it is
    known good, how many tries it has left, or that it is bad.
    """
    sr = open_sysroot(sysroot)
    rows = sr.status()
    view = sr.boot.view()
    if as_json:
        print_json(
            {
                "deployments": [_status_json(s) for s in rows],
                "bad_entries": [{"file": f, "error": e} for f, e in view.bad_entries],
            }
        )
        return
    if not rows:
        click.echo("No deployments yet; add one with 'bootkit deploy SOURCE'.")
    for s in rows:
        d = s.deployment
        flags = (("*", s.default), ("b", s.booted), ("p", d.pinned), ("!", s.counter.bad))
        marks = "".join(m for m, on in flags if on)
        click.echo(f"{marks:<3} {d.ref}  {d.title} {d.version}  kernel {d.kernel_version}")
        click.echo(f"      entry: {s.entry or '(missing: run bootkit bootloader update)'}")
        click.echo(f"      boot: {s.counter.describe()}")
    for f, e in view.bad_entries:
        click.echo(f"bootkit: warning: unreadable boot entry {f}: {e}", err=True)
    bad_default = next((s for s in rows if s.default and s.counter.bad), None)
    fallback = next((s for s in rows if not s.counter.bad), None)
    if bad_default is not None:
        instead = f"; the bootloader boots {fallback.deployment.ref} instead" if fallback else ""
        click.echo(
            f"bootkit: warning: the default deployment {bad_default.deployment.ref} failed to "
            f"boot{instead}; the next bootkit command makes that the default, "
            f"'bootkit set-default {bad_default.deployment.id}' tries it again",
            err=True,
        )
    if rows:
        click.echo("(* default, b booted, p pinned, ! failed to boot)")


@click.command("mark-good")
@sysroot_option
@click.argument("ident", metavar="[ID]", required=False)
def mark_good(sysroot: Path | None, ident: str | None) -> None:
    """Mark this boot good: the booted deployment's entry stops counting its tries.

    Run it once the system is up and working (bootkit-mark-good.service does so
    after boot-complete.target). Without ID, the deployment booted now (bootkit= on
    the kernel command line). Only $BOOT changes: the entry's file name loses its
    +LEFT-DONE counter and, with GRUB, bootkit's grubenv its counter.
    """
    dep, changes = open_sysroot(sysroot).mark_good(ident)
    if changes:
        click.echo(f"Marked {dep.ref} good: {'; '.join(changes)}")
    else:
        click.echo(f"{dep.ref} is already marked good")


@click.command()
@sysroot_option
def rollback(sysroot: Path | None) -> None:
    """Make the previous deployment (second in the menu) the default.

    A deployment found bad is skipped; one still being tried is tried afresh.
    """
    dep = open_sysroot(sysroot).rollback()
    click.echo(f"Default is now {dep.ref} ({dep.title} {dep.version}); reboot to use it")


@click.command("set-default")
@sysroot_option
@click.argument("ident", metavar="ID")
def set_default(sysroot: Path | None, ident: str) -> None:
    """Make deployment ID (an id, <os>/<id>, or its serial number) the default.

    With boot counting on, ID is tried afresh unless it is known good, even if it
    failed to boot before.
    """
    dep = open_sysroot(sysroot).set_default(ident)
    click.echo(f"Default is now {dep.ref} ({dep.title} {dep.version})")


@click.command()
@sysroot_option
@click.argument("ident", metavar="ID")
def pin(sysroot: Path | None, ident: str) -> None:
    """Keep deployment ID through 'bootkit cleanup'."""
    dep = open_sysroot(sysroot).set_pinned(ident, True)
    click.echo(f"Pinned {dep.ref}")


@click.command()
@sysroot_option
@click.argument("ident", metavar="ID")
def unpin(sysroot: Path | None, ident: str) -> None:
    """Let 'bootkit cleanup' remove deployment ID again."""
    dep = open_sysroot(sysroot).set_pinned(ident, False)
    click.echo(f"Unpinned {dep.ref}")


@click.command()
@sysroot_option
@click.argument("ident", metavar="ID")
def undeploy(sysroot: Path | None, ident: str) -> None:
    """Remove deployment ID, its boot entry, and payloads nothing else uses.

    The booted deployment is refused. When ID is the default, the newest remaining
    deployment becomes the default.
    """
    dep = open_sysroot(sysroot).undeploy(ident)
    click.echo(f"Removed {dep.ref}")


@click.command()
@sysroot_option
@click.option(
    "--keep",
    default=2,
    show_default=True,
    type=click.IntRange(min=0),
    help="How many of the newest deployments to keep besides default, booted and pinned.",
)
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def cleanup(sysroot: Path | None, keep: int, as_json: bool) -> None:
    """Remove old deployments and boot payloads that no entry references."""
    removed, payloads = open_sysroot(sysroot).cleanup(keep)
    if as_json:
        print_json(
            {
                "removed": [d.ref for d in removed],
                "payloads": [f"{p.os}/{p.name}" for p in payloads],
            }
        )
        return
    click.echo(
        f"Removed {len(removed)} deployment(s){': ' if removed else ''}"
        f"{', '.join(d.ref for d in removed)}; {len(payloads)} boot payload(s)"
    )


@click.group()
def bootloader() -> None:
    """Boot configuration commands."""


@bootloader.command("update")
@sysroot_option
def bootloader_update(sysroot: Path | None) -> None:
    """Regenerate all boot entries and bootloader configuration from the recorded state."""
    state = open_sysroot(sysroot).bootloader_update()
    click.echo(
        f"Bootloader updated; generation {state.generation}; {len(state.deployments)} entries"
    )


@bootloader.command("install")
@sysroot_option
def bootloader_install(sysroot: Path | None) -> None:
    """Put the configured bootloader on $BOOT at EFI/BOOT/BOOTX64.EFI.

    That is the path firmware boots without any EFI variable; systemd-boot also
    goes to EFI/systemd/. With a signing key in the sysroot's configuration the
    binary is signed, so firmware that trusts the key boots it under Secure Boot.
    """
    sr = open_sysroot(sysroot)
    boot = sr.boot
    signer = signing.configured_signer(boot.config)
    with sr.locked():
        installed = boot.install_bootloader(signer)
    how = f", signed for {signer.subject}" if signer else ""
    click.echo(f"Installed {boot.config.bootloader} at {installed}{how}")


COMMANDS = [
    init,
    deploy,
    status,
    mark_good,
    rollback,
    set_default,
    pin,
    unpin,
    undeploy,
    cleanup,
    bootloader,
]


@bootloader.command("grub-stub")
@sysroot_option
@click.option(
    "--boot-dir", "print_boot_dir", is_flag=True, help="Print only where $BOOT is mounted."
)
def bootloader_grub_stub(sysroot: Path | None, print_boot_dir: bool) -> None:
    """Print the GRUB script that loads bootkit's current menu (for /etc/grub.d/15_bootkit).

    Its paths are relative to the root of $BOOT; the caller points GRUB's root at
    that filesystem first.
    """
    from bootkit.formats import grubscript

    sr = open_sysroot(sysroot)
    if print_boot_dir:
        click.echo(str(sr.boot_path))
    else:
        click.echo(grubscript.render_stub(), nl=False)
