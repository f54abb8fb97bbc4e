"""TPM 2.0 arithmetic for predicting what a TPM will hold: PCR extends and policy digests.

Names follow the TPM 2.0 Library specification, part 2 (structures) and part 3
(commands). Everything a TPM marshals is big-endian.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping

from construct import Array, Bytes, Const, GreedyBytes, Int8ub, Int16ub, Int32ub, Struct, this

from bootkit.errors import BootkitError

# TPM_ALG_ID of the PCR banks a TPM may have, by the names systemd and hashlib use.
ALGORITHMS = {"sha1": 0x0004, "sha256": 0x000B, "sha384": 0x000C, "sha512": 0x000D}
TPM_CC_POLICY_PCR = 0x0000017F
# A PC client TPM has 24 PCRs: pcrSelect is 3 bytes, one bit a PCR.
PCR_COUNT = 24
SIZEOF_SELECT = PCR_COUNT // 8

TpmsPcrSelection = Struct(
    "hash" / Int16ub,
    "sizeof_select" / Int8ub,
    "pcr_select" / Bytes(this.sizeof_select),
)
TpmlPcrSelection = Struct(
    "count" / Int32ub,
    "selections" / Array(this.count, TpmsPcrSelection),
)
# What TPM2_PolicyPCR extends the policy digest with, after the old digest.
PolicyPcrUpdate = Struct(
    "command_code" / Const(TPM_CC_POLICY_PCR, Int32ub),
    "pcrs" / TpmlPcrSelection,
    "pcr_digest" / GreedyBytes,
)


def _algorithm(bank: str) -> int:
    try:
        return ALGORITHMS[bank]
    except KeyError:
        raise BootkitError(f"unknown PCR bank {bank!r}",
                           hint=f"use one of {', '.join(ALGORITHMS)}") from None


def digest_size(bank: str) -> int:
    _algorithm(bank)
    return hashlib.new(bank).digest_size


def extend(value: bytes, data: bytes, bank: str = "sha256") -> bytes:
    """The PCR after measuring `data` into it: H(value || H(data))."""
    _algorithm(bank)
    return hashlib.new(bank, value + hashlib.new(bank, data).digest()).digest()


def pcr_select(pcrs: set[int] | frozenset[int]) -> bytes:
    """The pcrSelect bitmap: bit (n % 8) of byte (n // 8) for PCR n."""
    bitmap = bytearray(SIZEOF_SELECT)
    for pcr in pcrs:
        if not 0 <= pcr < PCR_COUNT:
            raise BootkitError(f"there is no PCR {pcr}; a TPM has PCRs 0 to {PCR_COUNT - 1}")
        bitmap[pcr // 8] |= 1 << (pcr % 8)
    return bytes(bitmap)


def policy_pcr(values: Mapping[int, bytes], bank: str = "sha256",
               previous: bytes = bytes(32)) -> bytes:
    """The SHA-256 policy digest after TPM2_PolicyPCR binds the PCRs of `bank` to `values`.

    The TPM hashes the selected PCRs' values in ascending order into one digest with the
    session's algorithm (SHA-256 here, as systemd's sessions use), then extends the
    policy with the command code, the selection and that digest.
    """
    size = digest_size(bank)
    for pcr, value in values.items():
        if len(value) != size:
            raise BootkitError(f"PCR {pcr} of the {bank} bank holds {size} bytes, not {len(value)}")
    pcr_digest = hashlib.sha256(b"".join(values[pcr] for pcr in sorted(values))).digest()
    update = PolicyPcrUpdate.build({
        "pcrs": {"count": 1, "selections": [{
            "hash": _algorithm(bank), "sizeof_select": SIZEOF_SELECT,
            "pcr_select": pcr_select(frozenset(values)),
        }]},
        "pcr_digest": pcr_digest,
    })
    return hashlib.sha256(previous + update).digest()
