"""Secure Boot keys: loading signing keys, creating a PK/KEK/db set, enrolling it.

A key set is what a machine owner enrolls: PK (platform key) signs KEK updates,
KEK signs db updates, and db holds the certificates whose signatures the
firmware accepts for boot binaries. The variables store them as EFI signature
lists (bootkit.formats.esl) in the firmware's variable store (an OVMF vars
file, bootkit.formats.efivarstore).
"""

from __future__ import annotations

import datetime
import os
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID

from bootkit.base.files import atomic_write
from bootkit.errors import BootkitError
from bootkit.formats import efivarstore, esl
from bootkit.secureboot.authenticode import SigningKey

PASSPHRASE_ENV = "BOOTKIT_KEY_PASSPHRASE"

# Debian's ovmf package. No keys enrolled (Setup Mode): the template keys are
# enrolled into; pairs with OVMF_CODE_4M.secboot.fd.
BLANK_VARS = Path("/usr/share/OVMF/OVMF_VARS_4M.fd")
SECURE_BOOT_CODE = Path("/usr/share/OVMF/OVMF_CODE_4M.secboot.fd")

KEY_ROLES = ("PK", "KEK", "db")
KEY_SIZES = (2048, 3072)

EFI_GLOBAL_VARIABLE_GUID = uuid.UUID("8be4df61-93ca-11d2-aa0d-00e098032b8c")
EFI_IMAGE_SECURITY_DATABASE_GUID = uuid.UUID("d719b2cb-3d3a-4596-a3bc-dad00e67656f")


def read_passphrase(passphrase_file: Path | None) -> bytes | None:
    """The key passphrase from a file (first line) or the BOOTKIT_KEY_PASSPHRASE variable."""
    if passphrase_file is not None:
        try:
            text = passphrase_file.read_bytes()
        except OSError as err:
            raise BootkitError(f"cannot read {passphrase_file}: {err.strerror}") from None
        return text.splitlines()[0] if text.strip() else b""
    value = os.environ.get(PASSPHRASE_ENV)
    return value.encode() if value is not None else None


def load_private_key(path: Path, passphrase: bytes | None = None) -> SigningKey:
    """A PEM (or DER) private key, decrypted with `passphrase` when it is encrypted."""
    try:
        data = path.read_bytes()
    except OSError as err:
        raise BootkitError(f"cannot read key {path}: {err.strerror}") from None
    loader = (serialization.load_pem_private_key if b"-----BEGIN" in data
              else serialization.load_der_private_key)
    try:
        key = loader(data, password=passphrase or None)
    except TypeError:
        raise BootkitError(
            f"key {path} is encrypted",
            hint=f"give a passphrase file, or set {PASSPHRASE_ENV}",
        ) from None
    except ValueError:
        if passphrase:
            raise BootkitError(f"cannot decrypt key {path}: wrong passphrase?") from None
        raise BootkitError(f"{path} is not a private key (PEM or DER)") from None
    if not isinstance(key, SigningKey):
        raise BootkitError(f"key {path} is not an RSA key",
                           hint="UEFI firmware verifies RSA signatures only")
    return key


def load_certificate(path: Path) -> x509.Certificate:
    """An X.509 certificate, PEM or DER."""
    try:
        data = path.read_bytes()
    except OSError as err:
        raise BootkitError(f"cannot read certificate {path}: {err.strerror}") from None
    try:
        if b"-----BEGIN" in data:
            return x509.load_pem_x509_certificate(data)
        return x509.load_der_x509_certificate(data)
    except ValueError:
        raise BootkitError(f"{path} is not an X.509 certificate (PEM or DER)") from None


@dataclass(frozen=True)
class KeyPair:
    """One role's files: PEM key, PEM certificate, DER certificate, signature list."""

    role: str
    key: Path
    cert: Path
    cer: Path
    esl: Path


def _self_signed(key: rsa.RSAPrivateKey, common_name: str, years: int) -> x509.Certificate:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    now = datetime.datetime.now(datetime.UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=365 * years))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()),
                       critical=False)
        .add_extension(x509.ExtendedKeyUsage([x509.ObjectIdentifier("1.3.6.1.5.5.7.3.3")]),
                       critical=False)  # code signing
        .sign(key, hashes.SHA256())
    )


def signature_list(certificates: Sequence[x509.Certificate], owner: uuid.UUID) -> bytes:
    """EFI signature lists holding X.509 certificates, as db/KEK/PK variables store them."""
    return b"".join(
        esl.x509_list(cert.public_bytes(serialization.Encoding.DER), owner)
        for cert in certificates
    )


def x509_in_signature_database(data: bytes) -> list[x509.Certificate]:
    """The X.509 certificates in an EFI signature database (PK, KEK or db contents)."""
    found: list[x509.Certificate] = []
    for signature in esl.signatures(data):
        if signature.signature_type != esl.EFI_CERT_X509_GUID:
            continue
        try:
            found.append(x509.load_der_x509_certificate(signature.data))
        except ValueError as err:
            raise BootkitError(f"a certificate in the signature list is malformed: {err}") from None
    return found


def create_key_set(directory: Path, name: str = "bootkit", bits: int = 2048,
                   years: int = 10, owner: uuid.UUID | None = None) -> dict[str, KeyPair]:
    """Create PK, KEK and db key pairs in `directory` (refusing to overwrite any)."""
    if bits not in KEY_SIZES:
        raise BootkitError(f"unsupported key size {bits}", hint="use 2048 or 3072")
    directory.mkdir(parents=True, exist_ok=True)
    existing = [p.name for role in KEY_ROLES for p in directory.glob(f"{role}.*")]
    if existing:
        raise BootkitError(f"{directory} already holds keys: {', '.join(sorted(existing))}",
                           hint="pick an empty directory; keys are never overwritten")
    owner = owner or uuid.uuid4()
    pairs = {}
    for role in KEY_ROLES:
        key = rsa.generate_private_key(public_exponent=65537, key_size=bits)
        cert = _self_signed(key, f"{name} {role}", years)
        pair = KeyPair(role, directory / f"{role}.key", directory / f"{role}.crt",
                       directory / f"{role}.cer", directory / f"{role}.esl")
        atomic_write(pair.key, key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption()), mode=0o600)
        atomic_write(pair.cert, cert.public_bytes(serialization.Encoding.PEM))
        atomic_write(pair.cer, cert.public_bytes(serialization.Encoding.DER))
        atomic_write(pair.esl, signature_list([cert], owner))
        pairs[role] = pair
    atomic_write(directory / "GUID", f"{owner}\n")
    return pairs


@dataclass(frozen=True)
class PcrKeyPair:
    """The PCR policy key: PEM key, PEM certificate, PEM public key (what
    systemd-cryptenroll --tpm2-public-key takes)."""

    key: Path
    cert: Path
    public: Path


PCR_KEY_FILES = ("pcr.key", "pcr.crt", "pcr.pem")


def create_pcr_key(directory: Path, name: str = "bootkit", years: int = 10) -> PcrKeyPair:
    """Create the RSA 2048 key pair that signs PCR 11 policies (refusing to overwrite)."""
    from bootkit.secureboot.pcrpolicy import KEY_BITS, public_key_pem

    directory.mkdir(parents=True, exist_ok=True)
    existing = [f for f in PCR_KEY_FILES if (directory / f).exists()]
    if existing:
        raise BootkitError(f"{directory} already holds {', '.join(existing)}",
                           hint="pick another directory; keys are never overwritten")
    key = rsa.generate_private_key(public_exponent=65537, key_size=KEY_BITS)
    pair = PcrKeyPair(*(directory / f for f in PCR_KEY_FILES))
    atomic_write(pair.key, key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()), mode=0o600)
    atomic_write(pair.cert, _self_signed(key, f"{name} PCR policy", years).public_bytes(
        serialization.Encoding.PEM))
    atomic_write(pair.public, public_key_pem(key.public_key()))
    return pair


# Non-volatile, boot and runtime access, updates only with a time-based signature.
KEY_VARIABLE_ATTRIBUTES = (
    efivarstore.NON_VOLATILE
    | efivarstore.BOOTSERVICE_ACCESS
    | efivarstore.RUNTIME_ACCESS
    | efivarstore.TIME_BASED_AUTHENTICATED_WRITE_ACCESS
)


def enroll_keys(output: Path, pk: Path, kek: Sequence[Path], db: Sequence[Path],
                template: Path = BLANK_VARS, owner: uuid.UUID | None = None) -> Path:
    """An OVMF vars file with these certificates as PK, KEK and db (Secure Boot on).

    The variables are written straight into a copy of `template`'s variable
    store, as if enrolled from the firmware's setup menu; with a PK present the
    firmware enters User Mode and enforces Secure Boot (with SECURE_BOOT_CODE).
    Keys already in the template are replaced.
    """
    if not template.is_file():
        raise BootkitError(f"OVMF vars template {template} not found",
                           hint="install Debian's ovmf package")
    owner = owner or uuid.uuid4()
    variables = [
        efivarstore.Variable("PK", EFI_GLOBAL_VARIABLE_GUID, KEY_VARIABLE_ATTRIBUTES,
                             signature_list([load_certificate(pk)], owner)),
        efivarstore.Variable("KEK", EFI_GLOBAL_VARIABLE_GUID, KEY_VARIABLE_ATTRIBUTES,
                             signature_list([load_certificate(p) for p in kek], owner)),
        efivarstore.Variable("db", EFI_IMAGE_SECURITY_DATABASE_GUID, KEY_VARIABLE_ATTRIBUTES,
                             signature_list([load_certificate(p) for p in db], owner)),
    ]
    try:
        image = template.read_bytes()
    except OSError as err:
        raise BootkitError(f"cannot read {template}: {err.strerror}") from None
    atomic_write(output, efivarstore.set_variables(image, variables))
    return output


@dataclass(frozen=True)
class EnrolledCertificate:
    """A certificate in a firmware's PK, KEK or db, as a person compares them."""

    subject: str  # RFC 4514, e.g. "CN=bootkit db"
    sha256: str  # hex fingerprint of the DER certificate


def enrolled_certificates(vars_file: Path) -> dict[str, list[EnrolledCertificate]]:
    """The certificates enrolled as PK, KEK and db in an OVMF vars file, by role.

    A role whose variable is not set is absent; roles appear in the order of the store.
    """
    found: dict[str, list[EnrolledCertificate]] = {}
    for var in efivarstore.read_variables_file(vars_file):
        if var.name not in KEY_ROLES:
            continue
        try:
            certs = x509_in_signature_database(var.data)
        except BootkitError as err:
            raise BootkitError(f"{vars_file}: malformed {var.name} variable: {err}") from None
        found[var.name] = [
            EnrolledCertificate(c.subject.rfc4514_string(), c.fingerprint(hashes.SHA256()).hex())
            for c in certs
        ]
    return found
