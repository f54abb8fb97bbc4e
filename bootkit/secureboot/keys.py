"""Secure Boot keys: loading signing keys, creating a PK/KEK/db set, EFI signature lists.

A key set is what a machine owner enrolls: PK (platform key) signs KEK updates,
KEK signs db updates, and db holds the certificates whose signatures the
firmware accepts for boot binaries.
"""

from __future__ import annotations

import datetime
import os
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from construct import Bytes, GreedyRange, Int32ul, Struct, this
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID

from bootkit.base.files import atomic_copy, atomic_write
from bootkit.errors import BootkitError
from bootkit.formats import efivarstore
from bootkit.secureboot.authenticode import SigningKey

PASSPHRASE_ENV = "BOOTKIT_KEY_PASSPHRASE"

# Debian's ovmf package: a vars template with its snakeoil certificate already
# enrolled as PK, KEK and db, and the matching code image that enforces Secure Boot.
SNAKEOIL_KEY = Path("/usr/share/ovmf/PkKek-1-snakeoil.key")
SNAKEOIL_CERT = Path("/usr/share/ovmf/PkKek-1-snakeoil.pem")
SNAKEOIL_PASSPHRASE = b"snakeoil"
SNAKEOIL_CODE = Path("/usr/share/OVMF/OVMF_CODE_4M.snakeoil.fd")
SNAKEOIL_VARS = Path("/usr/share/OVMF/OVMF_VARS_4M.snakeoil.fd")
# No keys enrolled (Setup Mode); pairs with OVMF_CODE_4M.secboot.fd.
BLANK_VARS = Path("/usr/share/OVMF/OVMF_VARS_4M.fd")
SECURE_BOOT_CODE = Path("/usr/share/OVMF/OVMF_CODE_4M.secboot.fd")

KEY_ROLES = ("PK", "KEK", "db")
KEY_SIZES = (2048, 3072)

EFI_CERT_X509_GUID = uuid.UUID("a5c059a1-94e4-4aa7-87b5-ab155c2bf072")
EFI_GLOBAL_VARIABLE_GUID = uuid.UUID("8be4df61-93ca-11d2-aa0d-00e098032b8c")
EFI_IMAGE_SECURITY_DATABASE_GUID = uuid.UUID("d719b2cb-3d3a-4596-a3bc-dad00e67656f")

# UEFI 2.10, 32.4.1: EFI_SIGNATURE_LIST with its EFI_SIGNATURE_DATA entries.
SignatureData = Struct(
    "owner" / Bytes(16),
    "data" / Bytes(this._.signature_size - 16),
)
SignatureList = Struct(
    "signature_type" / Bytes(16),
    "list_size" / Int32ul,
    "header_size" / Int32ul,
    "signature_size" / Int32ul,
    "header" / Bytes(this.header_size),
    "signatures" / SignatureData[
        (this.list_size - 28 - this.header_size) // this.signature_size
    ],
)
SignatureDatabase = GreedyRange(SignatureList)


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
            hint=f"pass --passphrase-file FILE or set {PASSPHRASE_ENV}",
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
    """EFI_SIGNATURE_LIST(s) holding X.509 certificates, as db/KEK/PK variables store them."""
    # Each list has one fixed signature size, so certificates of different
    # lengths go into separate lists (the variable is their concatenation).
    lists = []
    for cert in certificates:
        body = cert.public_bytes(serialization.Encoding.DER)
        lists.append(SignatureList.build({
            "signature_type": EFI_CERT_X509_GUID.bytes_le,
            "list_size": 28 + 16 + len(body),
            "header_size": 0,
            "signature_size": 16 + len(body),
            "header": b"",
            "signatures": [{"owner": owner.bytes_le, "data": body}],
        }))
    return b"".join(lists)


def x509_in_signature_database(data: bytes) -> list[x509.Certificate]:
    """The X.509 certificates in an EFI signature database (PK, KEK or db contents)."""
    found = []
    for entry in SignatureDatabase.parse(data):
        if entry.signature_type == EFI_CERT_X509_GUID.bytes_le:
            found.extend(x509.load_der_x509_certificate(s.data) for s in entry.signatures)
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


def make_secure_boot_vars(output: Path, template: Path = SNAKEOIL_VARS) -> Path:
    """A private, writable OVMF vars file with Secure Boot keys enrolled.

    The default template has Debian's snakeoil certificate as PK, KEK and db,
    so images signed with SNAKEOIL_KEY boot under SNAKEOIL_CODE and nothing
    else does. Each VM needs its own copy: the firmware writes to it.
    """
    if not template.is_file():
        raise BootkitError(f"OVMF vars template {template} not found",
                           hint="install Debian's ovmf package")
    atomic_copy(template, output)
    return output
