"""Secure Boot signing with the key a sysroot is configured with (`bootkit init --signing-key`).

The key signs what the firmware or systemd-boot verifies before running it: each
deployment's Unified Kernel Image at deploy time, and systemd-boot itself when it
is installed. Only UKIs are signed, because a separate initrd is covered by no
signature: a signed kernel with a replaceable initrd would not be a verified boot.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, TypedDict

from bootkit.errors import BootkitError
from bootkit.records.config import SysrootConfig

if TYPE_CHECKING:
    # cryptography takes a tenth of a second to import; commands that never sign
    # (status, rollback, ...) should not pay for it.
    from cryptography import x509

    from bootkit.secureboot import authenticode


@dataclass(frozen=True)
class Signer:
    key: authenticode.SigningKey
    certificate: x509.Certificate

    def __post_init__(self) -> None:
        from bootkit.secureboot import authenticode

        if not authenticode.key_matches(self.key, self.certificate):
            raise BootkitError(
                "the signing key does not belong to the signing certificate",
                hint="pass the key and certificate of one key pair",
            )

    @property
    def subject(self) -> str:
        return self.certificate.subject.rfc4514_string()

    def sign(self, source: Path, output: Path | None = None) -> None:
        """Sign `source` into `output` (default: in place, atomically).

        An existing signature is replaced: a machine that trusts this key
        boots the binary, whoever signed it before.
        """
        from bootkit.secureboot import authenticode

        authenticode.sign_file(source, output or source, self.key, self.certificate,
                               replace=True)


def load_signer(key: Path, cert: Path, passphrase_file: Path | None = None) -> Signer:
    """The key pair, decrypted with the passphrase file or $BOOTKIT_KEY_PASSPHRASE."""
    from bootkit.secureboot import keys

    return Signer(
        keys.load_private_key(key, keys.read_passphrase(passphrase_file)),
        keys.load_certificate(cert),
    )


def configured_signer(cfg: SysrootConfig) -> Signer | None:
    """The signer of a sysroot, or None when it has no key."""
    if not cfg.signing_key or not cfg.signing_cert:
        return None
    passphrase_file = Path(cfg.signing_passphrase_file) if cfg.signing_passphrase_file else None
    return load_signer(Path(cfg.signing_key), Path(cfg.signing_cert), passphrase_file)


class SigningSettings(TypedDict):
    """The settings of a sysroot (`SysrootConfig` fields) for UKIs and signing."""

    uki: bool
    signing_key: str | None
    signing_cert: str | None
    signing_passphrase_file: str | None
    pcr_key: str | None
    pcr_cert: str | None


def boot_settings(
    uki: bool, key: Path | None, cert: Path | None, passphrase_file: Path | None,
    pcr_key: Path | None = None, pcr_cert: Path | None = None,
) -> SigningSettings:
    """The sysroot settings for UKIs and signing, checked: the keys must load and match.

    Paths are stored absolute: later commands may run from any directory.
    """
    if (key is None) != (cert is None):
        raise BootkitError(
            "a signing key and its certificate go together",
            hint="give both: the key signs, the certificate goes into each signature",
        )
    if (pcr_key is None) != (pcr_cert is None):
        raise BootkitError(
            "a PCR key and its certificate (or public key) go together",
            hint="give both: the key signs each UKI's PCR 11 policy, the public half goes "
            "into the UKI for systemd to check the signature with",
        )
    if passphrase_file is not None and key is None and pcr_key is None:
        raise BootkitError("a passphrase file decrypts a signing or PCR key, and none was given")
    if (key is not None or pcr_key is not None) and not uki:
        raise BootkitError(
            "signing needs Unified Kernel Images",
            hint="only a Unified Kernel Image covers kernel, initrd and command line with "
            "one signature, and is measured whole into PCR 11; boot the deployments as UKIs",
        )
    from bootkit.secureboot.uki import DEFAULT_STUB

    if uki and not DEFAULT_STUB.is_file():
        raise BootkitError(
            f"cannot build Unified Kernel Images: systemd's EFI stub {DEFAULT_STUB} is missing",
            hint="install the package systemd-boot-efi",
        )
    if key is not None and cert is not None:
        load_signer(key, cert, passphrase_file)
    if pcr_key is not None and pcr_cert is not None:
        from bootkit.secureboot import pcrpolicy

        pcrpolicy.load_pcr_signer(pcr_key, pcr_cert, passphrase_file)
    return SigningSettings(
        uki=uki,
        signing_key=str(key.resolve()) if key else None,
        signing_cert=str(cert.resolve()) if cert else None,
        signing_passphrase_file=str(passphrase_file.resolve()) if passphrase_file else None,
        pcr_key=str(pcr_key.resolve()) if pcr_key else None,
        pcr_cert=str(pcr_cert.resolve()) if pcr_cert else None,
    )
