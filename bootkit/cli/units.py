"""Commands that put bootkit's systemd units into an OS tree."""

from __future__ import annotations

from pathlib import Path

import click

from bootkit.boot.units import install_units


@click.group()
def systemd() -> None:
    """bootkit's systemd units: marking a counted boot good, finalizing staged deployments."""


@systemd.command("install")
@click.option(
    "--root",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("/"),
    show_default=True,
    help="The OS tree to install into, before it is deployed.",
)
@click.option(
    "--boot-dir",
    default="/efi",
    show_default=True,
    help="Where the sysroot mounts $BOOT, as given to 'bootkit init --boot-dir'.",
)
def systemd_install(root: Path, boot_dir: str) -> None:
    """Install and enable bootkit-mark-good.service in an OS tree.

    Once boot-complete.target is reached (order health checks Before= it), the
    unit runs 'bootkit mark-good': the booted deployment's entry stops counting
    tries, and with GRUB bootkit's grubenv counter goes. The unit and its
    enablement go to usr/lib/systemd/system, so every deployment of the tree has
    them. A drop-in also tells systemd-bless-boot, where installed, that the ESP is
    at /sysroot<BOOT-DIR> inside a deployment.

    Also installs and enables bootkit-finalize-staged.service, which finalizes a
    staged deployment at shutdown (and removes an unfinalized one at boot), and
    bootkit-finalize-failed.service, which fails at boot when that did not work;
    each gets a drop-in that keeps $BOOT (/sysroot<BOOT-DIR>) mounted for it.
    """
    done = install_units(root, boot_dir)
    click.echo(f"Installed {done.unit}, enabled by {done.enabled}")
    click.echo(f"Installed {done.dropin}")
    for unit, enabled, dropin in done.finalize:
        click.echo(f"Installed {unit}, enabled by {enabled}, with {dropin}")


COMMANDS = [systemd]
