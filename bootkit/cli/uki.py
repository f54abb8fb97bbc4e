"""Commands for Unified Kernel Images and Secure Boot: uki build/inspect, sign, keys."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import click

from bootkit.secureboot import authenticode, keys, pcrpolicy, uki

_existing_file = click.Path(exists=True, dir_okay=False, path_type=Path)
_output_file = click.Path(dir_okay=False, writable=True, path_type=Path)


@click.group("uki")
def uki_group() -> None:
    """Build and inspect Unified Kernel Images (systemd-stub + kernel + initrd + cmdline)."""


@uki_group.command("build")
@click.option("--linux", type=_existing_file, required=True, help="The kernel (bzImage/vmlinuz).")
@click.option("--initrd", "initrds", type=_existing_file, multiple=True,
              help="An initrd; repeat to concatenate several (in the order given).")
@click.option("--cmdline", default="", help="The kernel command line embedded in the image.")
@click.option("--os-release", type=_existing_file, required=True,
              help="The os-release file of the OS this kernel boots (shown by the boot menu).")
@click.option("--uname", help="Kernel release (default: read from the kernel's bzImage header).")
@click.option("--stub", type=_existing_file, default=uki.DEFAULT_STUB, show_default=True,
              help="The unsigned systemd EFI stub to build on.")
@click.option("--sbat", "sbat_file", type=_existing_file,
              help="A file of extra SBAT CSV lines, merged with the stub's own entries.")
@click.option("--pcr-key", type=_existing_file,
              help="Sign the UKI's PCR 11 policy with this key (from `bootkit keys create --pcr`).")
@click.option("--pcr-cert", type=_existing_file,
              help="The PCR key's certificate or PEM public key, embedded as .pcrpkey.")
@click.option("--passphrase-file", type=_existing_file,
              help=f"File whose first line decrypts the PCR key (else ${keys.PASSPHRASE_ENV}).")
@click.option("-o", "--output", type=_output_file, required=True, help="The UKI to write.")
def uki_build(linux: Path, initrds: tuple[Path, ...], cmdline: str, os_release: Path,
              uname: str | None, stub: Path, sbat_file: Path | None, pcr_key: Path | None,
              pcr_cert: Path | None, passphrase_file: Path | None, output: Path) -> None:
    """Build a Unified Kernel Image: one EFI binary that boots the kernel.

    The sections .osrel, .cmdline, .uname, .initrd and .linux are appended to
    systemd's stub, so firmware or systemd-boot can start the result directly
    (put it in $ESP/EFI/Linux/ for systemd-boot to list it). Sign the result
    with `bootkit sign` for Secure Boot: the signature then covers kernel,
    initrd and command line together. With --pcr-key and --pcr-cert it also
    carries .pcrpkey and .pcrsig, the signed PCR 11 policy systemd-cryptsetup
    checks before a TPM unseals a disk key.
    """
    if (pcr_key is None) != (pcr_cert is None):
        raise click.UsageError("--pcr-key and --pcr-cert go together")
    pcr_signer = (pcrpolicy.load_pcr_signer(pcr_key, pcr_cert, passphrase_file)
                  if pcr_key is not None and pcr_cert is not None else None)
    uki.build_uki_from_files(
        output, linux, list(initrds), cmdline, os_release, uname=uname, stub=stub, sbat=sbat_file,
        pcr_signer=pcr_signer,
    )
    click.echo(f"Wrote {output}")


@uki_group.command("inspect")
@click.argument("image", type=_existing_file)
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@click.option("--require-pcr-signature", is_flag=True,
              help="Exit with status 1 unless .pcrsig signs PCR 11 of every boot phase.")
def uki_inspect(image: Path, as_json: bool, require_pcr_signature: bool) -> None:
    """Show the sections of a UKI, its embedded command line, uname and os-release,
    and the PCR 11 values it will cause.

    PCR 11 is predicted for each boot phase systemd signs for (from the initrd to
    the system up), from exactly the section bytes the image carries, and checked
    against the signatures in .pcrsig made with the key in .pcrpkey: a UKI whose
    phases all read "signed" unlocks a disk enrolled against that key.
    """
    info = uki.inspect_uki(image)
    if as_json:
        click.echo(info.to_json())
    else:
        _print_uki(info)
    if require_pcr_signature and not (
        info.pcr11 is not None and info.pcr11.phases and all(p.signed for p in info.pcr11.phases)
    ):
        raise SystemExit(1)


def _print_uki(info: uki.UkiInfo) -> None:
    click.echo(f"{'SECTION':<10} {'VMA':>10} {'SIZE':>10}")
    for s in info.sections:
        click.echo(f"{s.name:<10} {s.vma:#10x} {s.size:>10}")
    click.echo(f"signed:  {'yes' if info.signed else 'no'}")
    click.echo(f"uname:   {info.uname if info.uname is not None else '-'}")
    click.echo(f"cmdline: {info.cmdline if info.cmdline is not None else '-'}")
    if info.os_release is not None:
        click.echo("os-release:")
        for line in info.os_release.splitlines():
            click.echo(f"  {line}")
    if info.pcr11 is None:
        click.echo(f"PCR 11:  not predicted: {info.pcr11_problem}")
        return
    check = info.pcr11
    click.echo(f"PCR 11 ({check.bank}, as systemd-stub {check.stub_version} measures it):")
    for phase in check.phases:
        state = "signed" if phase.signed else "NOT SIGNED"
        click.echo(f"  {phase.phase:<40} {phase.value}  {state}")
    click.echo(f"PCR key: {'sha256:' + check.public_key if check.public_key else '-'}")
    if check.problem:
        click.echo(f"PCR signature: {check.problem}")


@click.command("sign")
@click.option("--key", "key_path", type=_existing_file, required=True,
              help="The private key (PEM or DER; may be encrypted).")
@click.option("--cert", "cert_path", type=_existing_file, required=True,
              help="The certificate of that key (PEM or DER); it goes into the signature.")
@click.option("--passphrase-file", type=_existing_file,
              help=f"File whose first line decrypts the key (else ${keys.PASSPHRASE_ENV}).")
@click.option("--replace", is_flag=True, help="Drop an existing signature instead of refusing.")
@click.argument("source", type=_existing_file)
@click.argument("output", type=_output_file)
def sign(key_path: Path, cert_path: Path, passphrase_file: Path | None, replace: bool,
         source: Path, output: Path) -> None:
    """Sign the EFI binary SOURCE for Secure Boot, writing OUTPUT.

    Adds an Authenticode (PKCS#7) signature with SHA-256, as UEFI firmware
    checks against its db: systemd-boot, a UKI, or any PE image. OUTPUT may be
    SOURCE itself; it is replaced atomically.
    """
    key = keys.load_private_key(key_path, keys.read_passphrase(passphrase_file))
    cert = keys.load_certificate(cert_path)
    authenticode.sign_file(source, output, key, cert, replace=replace)
    click.echo(f"Signed {output} with {cert.subject.rfc4514_string()}")


@click.group("keys")
def keys_group() -> None:
    """Secure Boot keys: create your own PK/KEK/db, look at a firmware's enrolled keys."""


@keys_group.command("create")
@click.argument("directory", type=click.Path(file_okay=False, path_type=Path))
@click.option("--name", default="bootkit", show_default=True,
              help="Common-name prefix of the certificates (\"NAME PK\", \"NAME KEK\", ...).")
@click.option("--bits", type=click.Choice([str(b) for b in keys.KEY_SIZES]), default="2048",
              show_default=True, help="RSA key size.")
@click.option("--pcr", is_flag=True,
              help="Create the PCR policy key instead (pcr.key, pcr.crt, pcr.pem).")
@click.option("--json", "as_json", is_flag=True, help="Print the created files as JSON.")
def keys_create(directory: Path, name: str, bits: str, pcr: bool, as_json: bool) -> None:
    """Create a PK, KEK and db key set in DIRECTORY, or with --pcr the PCR policy key.

    Per role: ROLE.key (PEM, unencrypted, mode 0600), ROLE.crt (PEM), ROLE.cer
    (DER, for firmware setup menus) and ROLE.esl (EFI signature list); GUID
    holds the owner GUID used in the lists. Sign boot binaries with db.key.

    With --pcr: pcr.key (RSA 2048, mode 0600), pcr.crt and pcr.pem (the public
    key). `bootkit init --uki --pcr-key pcr.key --pcr-cert pcr.crt` makes every
    UKI carry a PCR 11 policy signed with it; enrol a LUKS2 volume once with
    `systemd-cryptenroll --tpm2-device=auto --tpm2-public-key=pcr.pem
    --tpm2-public-key-pcrs=11 DEVICE`.
    """
    if pcr:
        if bits != "2048":
            raise click.UsageError("the PCR policy key is RSA 2048; leave out --bits")
        made = keys.create_pcr_key(directory, name)
        if as_json:
            click.echo(json.dumps({"pcr": {"key": str(made.key), "cert": str(made.cert),
                                           "public": str(made.public)}}, indent=2))
        else:
            click.echo(f"pcr  {made.key}  {made.cert}  {made.public}")
        return
    pairs = keys.create_key_set(directory, name, int(bits))
    if as_json:
        click.echo(json.dumps({role: {"key": str(p.key), "cert": str(p.cert), "cer": str(p.cer),
                                      "esl": str(p.esl)} for role, p in pairs.items()}, indent=2))
        return
    for role, pair in pairs.items():
        click.echo(f"{role:<4} {pair.key}  {pair.cert}  {pair.cer}  {pair.esl}")


@keys_group.command("enroll")
@click.argument("directory", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("-o", "--output", type=_output_file, required=True,
              help="The OVMF vars file to write (give each VM its own copy).")
@click.option("--template", type=_existing_file, default=keys.BLANK_VARS, show_default=True,
              help="The OVMF vars file to start from; keys already in it are replaced.")
def keys_enroll(directory: Path, output: Path, template: Path) -> None:
    """Write an OVMF vars file with the key set in DIRECTORY enrolled.

    DIRECTORY is one made by `bootkit keys create` (PK.crt, KEK.crt, db.crt).
    Boot it with OVMF_CODE_4M.secboot.fd, `-machine q35,smm=on` and
    `-global driver=cfi.pflash01,property=secure,value=on`: the firmware then
    enforces Secure Boot and starts only binaries signed with db.key.
    """
    keys.enroll_keys(output, directory / "PK.crt", [directory / "KEK.crt"],
                     [directory / "db.crt"], template=template)
    click.echo(f"Wrote {output} (PK, KEK, db from {directory})")


@keys_group.command("show")
@click.argument("vars_file", type=_existing_file)
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def keys_show(vars_file: Path, as_json: bool) -> None:
    """List the certificates enrolled as PK, KEK and db in an OVMF vars file."""
    found = keys.enrolled_certificates(vars_file)
    if as_json:
        click.echo(json.dumps({role: [dataclasses.asdict(c) for c in certs]
                               for role, certs in found.items()}, indent=2))
        return
    for role in keys.KEY_ROLES:
        certs = found.get(role)
        click.echo(f"{role}: (not set)" if certs is None else f"{role}:")
        for c in certs or []:
            click.echo(f"  {c.subject}  sha256:{c.sha256}")


COMMANDS = [uki_group, sign, keys_group]
