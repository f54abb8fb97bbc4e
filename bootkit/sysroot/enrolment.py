"""Binding a LUKS2 volume to the sysroot's PCR key: one `systemd-cryptenroll` for all UKIs.

The volume gets a TPM2 token whose policy is "PCR 11 holds a value the PCR key signed"
(PolicyAuthorize), not a value of today. Every UKI bootkit builds carries such a
signature for the values it will cause, so the volume unlocks under each deployment,
old and new, without enrolling again; a UKI changed by one byte does not unlock it.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from bootkit.boot.payloads import UKI_FILE, Payload
from bootkit.errors import BootkitError
from bootkit.records.config import SysrootConfig
from bootkit.records.deployment import Deployment
from bootkit.secureboot import pcrpolicy


def public_key_of(cfg: SysrootConfig) -> bytes:
    """The PEM public key of the sysroot's PCR key, as systemd-cryptenroll takes it."""
    if not cfg.pcr_cert:
        raise BootkitError(
            "this sysroot has no PCR key",
            hint="create one with `bootkit keys create --pcr DIR`, record it with "
            "`bootkit init --force --uki --pcr-key DIR/pcr.key --pcr-cert DIR/pcr.crt ...`, "
            "deploy, then enrol",
        )
    return pcrpolicy.public_key_pem(pcrpolicy.load_public_key(Path(cfg.pcr_cert)))


def parse_pcrs(text: str) -> tuple[int, ...]:
    """"7+14" or "7,14" -> (7, 14); "" -> ()."""
    pcrs = []
    for word in text.replace(",", "+").split("+"):
        if not word.strip():
            continue
        if not word.strip().isdigit() or int(word) >= 24:
            raise BootkitError(f"invalid PCR {word!r}", hint="give PCR numbers 0-23, e.g. 7")
        pcrs.append(int(word))
    if pcrpolicy.PCR_KERNEL_BOOT in pcrs:
        raise BootkitError(
            "PCR 11 is bound through the signed policy already",
            hint="bound literally, it would lock the volume to today's UKI; leave it out",
        )
    return tuple(sorted(set(pcrs)))


def enrol_command(device: str, public_key: Path, tpm2_device: str,
                  pcrs: Sequence[int], unlock_key_file: Path | None) -> list[str]:
    """The systemd-cryptenroll command line that binds `device` to the signed policy."""
    argv = [
        "systemd-cryptenroll",
        f"--tpm2-device={tpm2_device}",
        f"--tpm2-public-key={public_key}",
        f"--tpm2-public-key-pcrs={pcrpolicy.PCR_KERNEL_BOOT}",
        # Without it, systemd 252 binds PCR 7 literally as well.
        f"--tpm2-pcrs={'+'.join(map(str, pcrs))}",
    ]
    if unlock_key_file is not None:
        argv.append(f"--unlock-key-file={unlock_key_file}")
    return [*argv, device]


@contextmanager
def public_key_file(pem: bytes) -> Iterator[Path]:
    """The PEM in a file of its own for the duration: the configured file may be a
    certificate, which systemd-cryptenroll does not read."""
    with tempfile.NamedTemporaryFile(prefix="bootkit-pcr-", suffix=".pem") as f:
        f.write(pem)
        f.flush()
        yield Path(f.name)


@dataclass(frozen=True)
class Unsigned:
    """A deployment whose UKI would not unlock an enrolled volume, and why."""

    ref: str
    reason: str


def unsigned_deployments(boot: Path, deployments: Sequence[Deployment],
                         fingerprint: str) -> list[Unsigned]:
    """The deployments whose UKI lacks a signature by this key for some boot phase:
    booting them asks for the passphrase."""
    from bootkit.secureboot import uki

    found = []
    for dep in deployments:
        if not dep.uki:
            found.append(Unsigned(dep.ref, "it boots a separate kernel and initramfs, no UKI"))
            continue
        image = Payload(dep.os, dep.payload).dir(boot) / UKI_FILE
        try:
            check = uki.inspect_uki(image).pcr11
        except BootkitError as err:
            found.append(Unsigned(dep.ref, err.message))
            continue
        if check is None or check.public_key != fingerprint:
            found.append(Unsigned(dep.ref, "its UKI carries no PCR policy signed by this key"))
        elif not all(p.signed for p in check.phases):
            found.append(Unsigned(dep.ref, "its UKI's PCR policy signature does not match it"))
    return found
