"""Signed PCR 11 policies: the measurements a UKI will cause, predicted and signed.

Before it starts the kernel, systemd-stub measures the UKI's own sections into PCR 11:
for each section it knows, in a fixed order, first the name with its NUL, then the
contents (VirtualSize bytes). systemd-pcrphase then extends the same PCR with a word
for each boot phase ("enter-initrd" first). So the values PCR 11 will hold are known
when the UKI is built. A signature over the TPM policy that binds PCR 11 to each of
them lets systemd-cryptsetup unlock a volume enrolled once against the public key
(`systemd-cryptenroll --tpm2-public-key`) under every UKI signed by that key, and
under no UKI whose measured bytes differ.

The UKI carries the public key as .pcrpkey (measured like the payload) and the
signatures as .pcrsig (JSON; not measured, as it cannot cover itself). systemd-stub
hands both to the initrd as /.extra/tpm2-pcr-public-key.pem and
/.extra/tpm2-pcr-signature.json, where systemd-cryptsetup finds them.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bootkit.errors import BootkitError
from bootkit.formats import tpm2

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric import rsa

    from bootkit.records.config import SysrootConfig

PCR_KERNEL_BOOT = 11
# The boot phases systemd-measure signs by default: the initrd, the switch to the
# real root, early system start, the system up. A secret stays sealed after "ready"
# (at shutdown), and before the initrd.
PHASES = (
    "enter-initrd",
    "enter-initrd:leave-initrd",
    "enter-initrd:leave-initrd:sysinit",
    "enter-initrd:leave-initrd:sysinit:ready",
)
BANK = "sha256"
PCRPKEY = ".pcrpkey"
PCRSIG = ".pcrsig"
# The sections systemd-stub measures, in the order it measures them, by the first
# stub version that measures them so. Later versions measure more sections (.uname,
# .sbat, .ucode, profiles); their order is not predicted here until it is checked
# against the stub itself.
MEASURED_SECTIONS = {
    252: (".linux", ".osrel", ".cmdline", ".initrd", ".splash", ".dtb", PCRPKEY),
}
# Every section a known stub measures, and the signature: what `bootkit uki inspect` reads.
SIGNED_OR_MEASURED = frozenset({PCRSIG}.union(*MEASURED_SECTIONS.values()))
_STUB_VERSION = re.compile(rb"LoaderInfo: systemd-stub (\d+)")
KEY_BITS = 2048  # what every TPM 2.0 verifies; 3072 is optional in the specification


def stub_version(sdmagic: bytes) -> int | None:
    """The systemd version of a stub, from its .sdmagic section ("#### LoaderInfo:
    systemd-stub 252.39-1~deb12u2 ####"); None if it does not say."""
    found = _STUB_VERSION.search(sdmagic)
    return int(found.group(1)) if found else None


def measured_sections(version: int | None) -> tuple[str, ...]:
    """The sections a stub of `version` measures into PCR 11, in order."""
    known = [v for v in MEASURED_SECTIONS if version is not None and v <= version]
    if version is None or not known or version > max(MEASURED_SECTIONS):
        said = "does not say its version" if version is None else f"is systemd-stub {version}"
        raise BootkitError(
            f"cannot predict PCR 11 for this UKI: its stub {said}, and bootkit knows the "
            f"measurements of systemd-stub {', '.join(map(str, MEASURED_SECTIONS))}",
            hint="build the UKI on systemd-stub 252, or leave out the PCR key",
        )
    return MEASURED_SECTIONS[max(known)]


@dataclass(frozen=True)
class PhaseValue:
    phase: str
    value: bytes  # what PCR 11 holds in that phase

    @property
    def policy(self) -> bytes:
        return tpm2.policy_pcr({PCR_KERNEL_BOOT: self.value}, BANK)


def predict(sections: Mapping[str, bytes], version: int | None) -> list[PhaseValue]:
    """PCR 11 in each phase of `PHASES`, for a UKI with these section contents."""
    value = bytes(tpm2.digest_size(BANK))  # PCR 11 starts at zero; firmware leaves it
    for name in measured_sections(version):
        data = sections.get(name)
        if not data:  # the stub skips sections that are missing or empty
            continue
        value = tpm2.extend(value, name.encode() + b"\0", BANK)
        value = tpm2.extend(value, data, BANK)
    predicted = []
    for phase in PHASES:
        at = value
        for word in phase.split(":"):
            at = tpm2.extend(at, word.encode(), BANK)
        predicted.append(PhaseValue(phase, at))
    return predicted


# --- keys ------------------------------------------------------------------------------


def public_key_pem(public_key: rsa.RSAPublicKey) -> bytes:
    from cryptography.hazmat.primitives import serialization

    return public_key.public_bytes(serialization.Encoding.PEM,
                                   serialization.PublicFormat.SubjectPublicKeyInfo)


def fingerprint(public_key: rsa.RSAPublicKey) -> str:
    """How .pcrsig names the key that signed: SHA-256 of the DER RSAPublicKey (PKCS #1,
    modulus and exponent, as systemd 252 computes it; not the SubjectPublicKeyInfo)."""
    import hashlib

    from cryptography.hazmat.primitives import serialization

    der = public_key.public_bytes(serialization.Encoding.DER,
                                  serialization.PublicFormat.PKCS1)
    return hashlib.sha256(der).hexdigest()


def load_public_key(path: Path) -> rsa.RSAPublicKey:
    """An RSA public key from a PEM public key or a certificate (PEM or DER)."""
    try:
        data = path.read_bytes()
    except OSError as err:
        raise BootkitError(f"cannot read {path}: {err.strerror}") from None
    return parse_public_key(data, str(path))


def parse_public_key(data: bytes, source: str) -> rsa.RSAPublicKey:
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    key: object
    try:
        if b"-----BEGIN PUBLIC KEY-----" in data:
            key = serialization.load_pem_public_key(data)
        elif b"-----BEGIN" in data:
            key = x509.load_pem_x509_certificate(data).public_key()
        else:
            key = x509.load_der_x509_certificate(data).public_key()
    except ValueError:
        raise BootkitError(
            f"{source} is neither a PEM public key nor an X.509 certificate",
            hint="give the pcr.pem or pcr.crt that `bootkit keys create --pcr` wrote",
        ) from None
    if not isinstance(key, rsa.RSAPublicKey) or key.key_size != KEY_BITS:
        raise BootkitError(f"{source} is not an RSA {KEY_BITS} public key",
                           hint="systemd's signed PCR policies need an RSA 2048 key")
    return key


@dataclass(frozen=True)
class PcrSigner:
    """The key pair that signs PCR 11 policies."""

    key: rsa.RSAPrivateKey
    public_key: rsa.RSAPublicKey

    def __post_init__(self) -> None:
        if self.key.public_key().public_numbers() != self.public_key.public_numbers():
            raise BootkitError("the PCR key does not belong to the PCR certificate or public key",
                               hint="pass the two halves of one key pair")
        if self.key.key_size != KEY_BITS:
            raise BootkitError(f"the PCR key is RSA {self.key.key_size}, not RSA {KEY_BITS}",
                               hint="create one with `bootkit keys create --pcr`")

    @property
    def public_pem(self) -> bytes:
        return public_key_pem(self.public_key)

    def sign(self, sections: Mapping[str, bytes], version: int | None) -> bytes:
        """The .pcrsig JSON for a UKI with these sections (.pcrpkey among them)."""
        from cryptography.hazmat.primitives import hashes
        from cryptography.hazmat.primitives.asymmetric import padding

        if sections.get(PCRPKEY) != self.public_pem:
            raise BootkitError("the UKI's .pcrpkey is not the public half of the PCR key")
        fp = fingerprint(self.public_key)
        entries = []
        for predicted in predict(sections, version):
            policy = predicted.policy
            signature = self.key.sign(policy, padding.PKCS1v15(), hashes.SHA256())
            entries.append({"pcrs": [PCR_KERNEL_BOOT], "pkfp": fp, "pol": policy.hex(),
                            "sig": base64.b64encode(signature).decode()})
        return json.dumps({BANK: entries}, separators=(",", ":")).encode()


def load_pcr_signer(key: Path, public: Path, passphrase_file: Path | None = None) -> PcrSigner:
    """The PCR key pair, the private key decrypted with the passphrase file or
    $BOOTKIT_KEY_PASSPHRASE."""
    from bootkit.secureboot import keys

    return PcrSigner(keys.load_private_key(key, keys.read_passphrase(passphrase_file)),
                     load_public_key(public))


def configured_pcr_signer(cfg: SysrootConfig) -> PcrSigner | None:
    """The PCR signer of a sysroot, or None when it has no PCR key."""
    if not cfg.pcr_key or not cfg.pcr_cert:
        return None
    passphrase = Path(cfg.signing_passphrase_file) if cfg.signing_passphrase_file else None
    return load_pcr_signer(Path(cfg.pcr_key), Path(cfg.pcr_cert), passphrase)


# --- checking a UKI's signature --------------------------------------------------------


@dataclass(frozen=True)
class PhaseCheck:
    phase: str
    value: str  # hex
    signed: bool  # .pcrsig holds a valid signature of this phase's policy by .pcrpkey


@dataclass(frozen=True)
class PolicyCheck:
    stub_version: int | None
    bank: str
    public_key: str | None  # the .pcrpkey's fingerprint
    phases: tuple[PhaseCheck, ...]
    problem: str | None  # why no phase could be checked, if none could

    def to_dict(self) -> dict[str, Any]:
        return {
            "stub_version": self.stub_version, "bank": self.bank, "pcr": PCR_KERNEL_BOOT,
            "public_key_sha256": self.public_key, "problem": self.problem,
            "phases": [{"phase": p.phase, "value": p.value, "signed": p.signed}
                       for p in self.phases],
        }


def _signature_entries(pcrsig: bytes) -> list[dict[str, Any]]:
    try:
        document = json.loads(pcrsig.rstrip(b"\0"))
    except (UnicodeDecodeError, ValueError) as err:
        raise BootkitError(f".pcrsig is not JSON: {err}") from None
    entries = document.get(BANK, []) if isinstance(document, dict) else None
    if not isinstance(entries, list):
        raise BootkitError(f".pcrsig has no list of {BANK} signatures")
    return [e for e in entries if isinstance(e, dict)]


def _valid(entry: Mapping[str, Any], policy: bytes, fp: str, public_key: rsa.RSAPublicKey) -> bool:
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import padding

    if entry.get("pcrs") != [PCR_KERNEL_BOOT] or entry.get("pkfp") != fp:
        return False
    if entry.get("pol") != policy.hex() or not isinstance(entry.get("sig"), str):
        return False
    try:
        signature = base64.b64decode(entry["sig"], validate=True)
        public_key.verify(signature, policy, padding.PKCS1v15(), hashes.SHA256())
    except (binascii.Error, InvalidSignature):
        return False
    return True


def check(sections: Mapping[str, bytes], version: int | None) -> PolicyCheck:
    """PCR 11 predicted for each phase, and whether the UKI's .pcrsig signs it with the
    key in its .pcrpkey."""
    predicted = predict(sections, version)
    pem, pcrsig = sections.get(PCRPKEY), sections.get(PCRSIG)
    problem, fp, entries, public_key = None, None, [], None
    if pem is None or pcrsig is None:
        problem = f"the UKI has no {PCRPKEY if pem is None else PCRSIG} section"
    else:
        try:
            public_key = parse_public_key(pem.rstrip(b"\0"), PCRPKEY)
            fp = fingerprint(public_key)
            entries = _signature_entries(pcrsig)
        except BootkitError as err:
            problem = err.message
    phases = []
    for p in predicted:
        policy = p.policy
        signed = public_key is not None and fp is not None and any(
            _valid(e, policy, fp, public_key) for e in entries)
        phases.append(PhaseCheck(p.phase, p.value.hex(), signed))
    return PolicyCheck(version, BANK, fp, tuple(phases), problem)
