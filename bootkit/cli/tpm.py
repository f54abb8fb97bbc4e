"""`bootkit tpm enroll`: bind a LUKS2 volume to the PCR policy every deployment's UKI signs."""

from __future__ import annotations

import shlex
import subprocess
from pathlib import Path

import click

from bootkit.base.process import find_program
from bootkit.cli.common import open_sysroot, print_json, sysroot_option, warn
from bootkit.errors import BootkitError
from bootkit.secureboot import pcrpolicy
from bootkit.sysroot import enrolment


@click.group("tpm")
def tpm_group() -> None:
    """Disk encryption unlocked by the TPM, across bootkit updates."""


@tpm_group.command("enroll")
@sysroot_option
@click.argument("device")
@click.option("--tpm2-device", default="auto", show_default=True,
              help="The TPM, as systemd-cryptenroll takes it: auto, a device path, or a "
              "TCTI such as swtpm:host=127.0.0.1,port=2321.")
@click.option("--pcrs", "pcrs_text", default="", metavar="PCR+PCR",
              help="PCRs to bind literally as well, e.g. 7 (the Secure Boot state); "
              "default none.")
@click.option("--unlock-key-file", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="A file holding a passphrase or key of the volume (else "
              "systemd-cryptenroll asks for one).")
@click.option("--print", "print_only", is_flag=True,
              help="Print the systemd-cryptenroll command and enrol nothing.")
@click.option("--json", "as_json", is_flag=True,
              help="Print the command and the deployments that would not unlock as JSON.")
def tpm_enroll(sysroot: Path | None, device: str, tpm2_device: str, pcrs_text: str,
               unlock_key_file: Path | None, print_only: bool, as_json: bool) -> None:
    """Enrol the LUKS2 volume DEVICE once against the sysroot's PCR key.

    Runs systemd-cryptenroll with the public half of the key recorded by `bootkit
    init --pcr-key`, bound to PCR 11 through the signed policy each UKI carries:
    the volume then unlocks under every deployment bootkit signs, without
    enrolling again after an update. Keep the passphrase slot: it is the way in
    when a UKI is not signed (one built before the key was set, or tampered with).

    Deployments that would ask for the passphrase are listed first. For the
    root filesystem, put in the image's own kernel arguments (so that every UKI
    carries them) rd.luks.uuid=<the volume's UUID> and
    rd.luks.options=tpm2-device=auto,tpm2-signature=/.extra/tpm2-pcr-signature.json,
    and build the initramfs with dracut's crypt, dm, tpm2-tss and
    systemd-pcrphase modules (README: "Measured boot").
    """
    sr = open_sysroot(sysroot)
    cfg = sr.config
    pem = enrolment.public_key_of(cfg)
    pcrs = enrolment.parse_pcrs(pcrs_text)
    fingerprint = pcrpolicy.fingerprint(pcrpolicy.parse_public_key(pem, "the PCR key"))
    unsigned = enrolment.unsigned_deployments(sr.boot_path, sr.deployments(), fingerprint)
    with enrolment.public_key_file(pem) as public_key:
        argv = enrolment.enrol_command(device, public_key, tpm2_device, pcrs, unlock_key_file)
        if as_json or print_only:
            shown = [*argv[:2], "--tpm2-public-key=<the PCR public key>", *argv[3:]]
            if as_json:
                print_json({"command": shown, "public_key_sha256": fingerprint,
                            "unsigned": [{"ref": u.ref, "reason": u.reason} for u in unsigned]})
            else:
                _warn_unsigned(unsigned)
                click.echo(shlex.join(shown))
            return
        _warn_unsigned(unsigned)
        argv[0] = find_program(argv[0])
        # Inherits the terminal: systemd-cryptenroll asks for the passphrase itself.
        code = subprocess.run(argv, check=False).returncode
    if code != 0:
        raise BootkitError(f"systemd-cryptenroll failed with exit status {code}",
                           hint="its message above says why; the volume is unchanged")
    click.echo(f"Enrolled {device}: it unlocks under every UKI whose PCR 11 policy is signed "
               f"by sha256:{fingerprint[:16]}…")


def _warn_unsigned(unsigned: list[enrolment.Unsigned]) -> None:
    for u in unsigned:
        warn(f"{u.ref} will ask for the passphrase: {u.reason}")
    if unsigned:
        warn("deploy again to give them signed UKIs")


COMMANDS = [tpm_group]
