"""`bootkit init`: lay out a sysroot and record how it boots."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from bootkit.cli.common import sysroot_option
from bootkit.cli.options import timeout_option, tries_option
from bootkit.records.config import DEFAULT_TRIES, Bootloader, SysrootConfig
from bootkit.secureboot import signing
from bootkit.sysroot import operations
from bootkit.sysroot.layout import Sysroot

_key_file = click.Path(exists=True, dir_okay=False, path_type=Path)


def uki_options(f: Callable[..., Any]) -> Callable[..., Any]:
    """--uki and the signing keys, passed on as `uki`, `signing_key`, `signing_cert`,
    `passphrase_file`, `pcr_key` and `pcr_cert`: the arguments of `signing.boot_settings`."""
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
                help="File whose first line decrypts the signing and PCR keys; its path is "
                "recorded (else $BOOTKIT_KEY_PASSPHRASE is read at each deploy).",
            ),
            click.option(
                "--pcr-key",
                type=_key_file,
                help="Sign each UKI's PCR 11 policy with this private key (RSA 2048, from "
                "`bootkit keys create --pcr`), so a disk enrolled once against its public "
                "key with systemd-cryptenroll unlocks under every deployment; needs --uki.",
            ),
            click.option(
                "--pcr-cert",
                type=_key_file,
                help="The public half of the PCR key (its certificate or PEM public key); "
                "each UKI carries it as .pcrpkey.",
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
@timeout_option
@click.option("--force", is_flag=True, help="Change the configuration of an existing sysroot.")
@tries_option(
    "Boot counting: how often a new deployment's entry is tried without being marked "
    "good before the bootloader falls back to the previous one; 0 turns counting off.",
    default=DEFAULT_TRIES,
    show_default=True,
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
    pcr_key: Path | None,
    pcr_cert: Path | None,
) -> None:
    """Lay out a sysroot for deployments and record its boot configuration.

    Boot counting (--tries) follows the UAPI Automatic Boot Assessment scheme: a new
    entry is tried that often; once the system is up, systemd-bless-boot,
    bootkit-mark-good or 'bootkit mark-good' marks it good; if that never happens,
    systemd-boot or GRUB boots the previous deployment by itself.

    With --uki, each deployment made from then on boots as a Unified Kernel Image
    whose embedded command line names it; with a signing key, deploy signs each
    UKI, so under Secure Boot kernel, initramfs and command line are all verified.
    With a PCR key, each UKI also carries a signed PCR 11 policy for TPM-bound disk
    encryption (see `bootkit uki inspect` and the README's "Measured boot").
    """
    config = SysrootConfig(
        os=os_name, bootloader=Bootloader(bootloader), boot_dir=boot_dir, root_arg=root_arg,
        timeout=timeout, tries=tries,
        **signing.boot_settings(uki, signing_key, signing_cert, passphrase_file, pcr_key,
                                pcr_cert),
    )
    sr = operations.init(Sysroot(sysroot or Path("/")), config, force)
    extra = "; UKIs" if uki else ""
    extra += ", signed" if signing_key else ""
    extra += ", with a signed PCR 11 policy" if pcr_key else ""
    click.echo(
        f"Initialized {sr.path} for {os_name}; bootloader {bootloader}; $BOOT at {boot_dir}{extra}"
    )


COMMANDS = [init]
