"""`bootkit status`: the deployments in the order the boot menu shows them."""

from __future__ import annotations

from pathlib import Path

import click

from bootkit.cli.common import (
    failure_json,
    open_sysroot,
    print_json,
    staged_json,
    status_json,
    sysroot_option,
    warn,
)
from bootkit.records.deployment import ImageOrigin
from bootkit.sysroot.layout import Sysroot
from bootkit.sysroot.status import DeploymentStatus, StagedStatus, status


@click.command("status")
@sysroot_option
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def status_command(sysroot: Path | None, as_json: bool) -> None:
    """List deployments in boot menu order: the default first, then newest first.

    Deployments found bad (tried until no boot tries were left, never marked good)
    come last, as the bootloader lists them. For each, 'boot' says whether it is
    known good, how many tries it has left, or that it is bad.

    A staged deployment ('bootkit deploy --stage') is shown after the menu: it joins
    it at shutdown. A failed finalize is shown as a warning until it is dealt with.
    JSON: "staged" and "finalize_failure" are null when there is none.
    """
    show_status(open_sysroot(sysroot), as_json)


def show_status(sr: Sysroot, as_json: bool) -> None:
    """Print the status of `sr`, as text or JSON (for `image status` too)."""
    found = status(sr)
    if as_json:
        print_json({
            "deployments": [status_json(s) for s in found.rows],
            "bad_entries": [{"file": f, "error": e} for f, e in found.unreadable_entries],
            "staged": staged_json(found.staged) if found.staged else None,
            "finalize_failure": (
                failure_json(found.finalize_failure) if found.finalize_failure else None
            ),
        })
        return
    if not found.rows:
        click.echo("No deployments yet; add one with 'bootkit deploy SOURCE'.")
    for row in found.rows:
        _print_row(row)
    if found.staged is not None:
        _print_staged(found.staged)
    for message in found.warnings():
        warn(message)
    if found.rows:
        click.echo("(* default, b booted, p pinned, ! failed to boot)")


def _print_row(s: DeploymentStatus) -> None:
    d = s.deployment
    flags = (("*", s.default), ("b", s.booted), ("p", d.pinned), ("!", s.counter.bad))
    marks = "".join(m for m, on in flags if on)
    click.echo(f"{marks:<3} {d.ref}  {d.title} {d.version}  kernel {d.kernel_version}")
    click.echo(f"      entry: {s.entry or '(missing: run bootkit bootloader update)'}")
    click.echo(f"      boot: {s.counter.describe()}")
    _print_image(d.image)


def _print_image(image: ImageOrigin | None) -> None:
    if image is not None:
        label = f", version {image.version}" if image.version else ""
        trust = "signature verified" if image.verified else "UNVERIFIED"
        click.echo(f"      image: {image.reference}")
        click.echo(f"             {image.manifest_digest}{label}; {trust}")


def _print_staged(s: StagedStatus) -> None:
    click.echo(f"staged {s.ref}  {s.title} {s.version}")
    _print_image(s.image)
    if s.locked:
        click.echo("      locked: 'bootkit finalize-staged --unlock' lets shutdown add it to "
                   "the menu, '--now' adds it at once; a shutdown while locked discards it")
    else:
        click.echo("      joins the boot menu at shutdown ('bootkit finalize-staged --now': at once)")


COMMANDS = [status_command]
