"""`bootkit bootloader`: the boot configuration and the bootloader binary on $BOOT."""

from __future__ import annotations

from pathlib import Path

import click

from bootkit.cli.common import open_sysroot, sysroot_option
from bootkit.sysroot import operations


@click.group()
def bootloader() -> None:
    """Boot configuration commands."""


@bootloader.command("update")
@sysroot_option
def bootloader_update(sysroot: Path | None) -> None:
    """Regenerate all boot entries and bootloader configuration from the recorded state."""
    state = operations.bootloader_update(open_sysroot(sysroot))
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
    installed = operations.install_bootloader(open_sysroot(sysroot))
    how = f", signed for {installed.signed_for}" if installed.signed_for else ""
    click.echo(f"Installed {installed.bootloader} at {installed.path}{how}")


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


COMMANDS = [bootloader]
