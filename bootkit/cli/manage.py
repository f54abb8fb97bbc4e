"""Commands that change which deployments there are and which one boots."""

from __future__ import annotations

from pathlib import Path

import click

from bootkit.cli.common import open_sysroot, print_json, sysroot_option
from bootkit.sysroot import cleanup as cleaning
from bootkit.sysroot import operations


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
    dep, changes = operations.mark_good(open_sysroot(sysroot), ident)
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
    dep = operations.rollback(open_sysroot(sysroot))
    click.echo(f"Default is now {dep.ref} ({dep.title} {dep.version}); reboot to use it")


@click.command("set-default")
@sysroot_option
@click.argument("ident", metavar="ID")
def set_default(sysroot: Path | None, ident: str) -> None:
    """Make deployment ID (an id, <os>/<id>, or its serial number) the default.

    With boot counting on, ID is tried afresh unless it is known good, even if it
    failed to boot before.
    """
    dep = operations.set_default(open_sysroot(sysroot), ident)
    click.echo(f"Default is now {dep.ref} ({dep.title} {dep.version})")


@click.command()
@sysroot_option
@click.argument("ident", metavar="ID")
def pin(sysroot: Path | None, ident: str) -> None:
    """Keep deployment ID through 'bootkit cleanup'."""
    dep = operations.set_pinned(open_sysroot(sysroot), ident, True)
    click.echo(f"Pinned {dep.ref}")


@click.command()
@sysroot_option
@click.argument("ident", metavar="ID")
def unpin(sysroot: Path | None, ident: str) -> None:
    """Let 'bootkit cleanup' remove deployment ID again."""
    dep = operations.set_pinned(open_sysroot(sysroot), ident, False)
    click.echo(f"Unpinned {dep.ref}")


@click.command()
@sysroot_option
@click.argument("ident", metavar="ID")
def undeploy(sysroot: Path | None, ident: str) -> None:
    """Remove deployment ID, its boot entry, and payloads nothing else uses.

    The booted deployment is refused. When ID is the default, the newest remaining
    deployment becomes the default.
    """
    ref = cleaning.undeploy(open_sysroot(sysroot), ident)
    click.echo(f"Removed {ref}")


@click.command()
@sysroot_option
@click.option(
    "--keep",
    default=cleaning.DEFAULT_KEEP,
    show_default=True,
    type=click.IntRange(min=0),
    help="How many of the newest deployments to keep besides default, booted and pinned.",
)
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def cleanup(sysroot: Path | None, keep: int, as_json: bool) -> None:
    """Remove old deployments, boot payloads that no entry references, and OS image
    blobs and layers that no kept deployment needs."""
    done = cleaning.cleanup(open_sysroot(sysroot), keep)
    removed, payloads = done.deployments, done.payloads
    if as_json:
        print_json({
            "removed": [d.ref for d in removed],
            "payloads": [f"{p.os}/{p.name}" for p in payloads],
            "image_bytes": done.image_bytes,
        })
        return
    images = f"; {done.image_bytes / (1 << 20):.1f} MiB of image blobs" if done.image_bytes else ""
    click.echo(
        f"Removed {len(removed)} deployment(s){': ' if removed else ''}"
        f"{', '.join(d.ref for d in removed)}; {len(payloads)} boot payload(s){images}"
    )


COMMANDS = [mark_good, rollback, set_default, pin, unpin, undeploy, cleanup]
