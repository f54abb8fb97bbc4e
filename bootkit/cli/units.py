"""Commands that put bootkit's systemd units into an OS tree."""

from __future__ import annotations

from pathlib import Path

import click

from bootkit.boot.units import install_units


@click.group()
def systemd() -> None:
    """The systemd units that mark a counted boot good once boot-complete.target is reached."""


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
    """
    done = install_units(root, boot_dir)
    click.echo(f"Installed {done.unit}, enabled by {done.enabled}")
    click.echo(f"Installed {done.dropin}")


COMMANDS = [systemd]
