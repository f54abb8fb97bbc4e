"""EFI signature lists (UEFI 2.10, 32.4.1): what the PK, KEK and db variables hold.

Such a variable is a concatenation of EFI_SIGNATURE_LIST structures. Each list
holds signatures of one type and one size, every one an EFI_SIGNATURE_DATA: the
owner's GUID, then the signature itself (for EFI_CERT_X509_GUID, a DER certificate).
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass

from construct import Bytes, GreedyRange, Int32ul, Struct, this

EFI_CERT_X509_GUID = uuid.UUID("a5c059a1-94e4-4aa7-87b5-ab155c2bf072")

OWNER_SIZE = 16
# signature_type, then list_size, header_size and signature_size (UINT32 each).
LIST_HEADER_SIZE = 16 + 3 * 4

SignatureData = Struct(
    "owner" / Bytes(OWNER_SIZE),
    "data" / Bytes(this._.signature_size - OWNER_SIZE),
)
SignatureList = Struct(
    "signature_type" / Bytes(16),
    "list_size" / Int32ul,
    "header_size" / Int32ul,
    "signature_size" / Int32ul,
    "header" / Bytes(this.header_size),
    "signatures" / SignatureData[
        (this.list_size - LIST_HEADER_SIZE - this.header_size) // this.signature_size
    ],
)
SignatureDatabase = GreedyRange(SignatureList)


@dataclass(frozen=True)
class Signature:
    """One EFI_SIGNATURE_DATA, with the type of the list that holds it."""

    signature_type: uuid.UUID
    owner: uuid.UUID
    data: bytes


def x509_list(der: bytes, owner: uuid.UUID) -> bytes:
    """A signature list holding one DER certificate.

    A list has one signature size, so certificates of different lengths go
    into lists of their own; a variable holding several is their concatenation.
    """
    return bytes(SignatureList.build({
        "signature_type": EFI_CERT_X509_GUID.bytes_le,
        "list_size": LIST_HEADER_SIZE + OWNER_SIZE + len(der),
        "header_size": 0,
        "signature_size": OWNER_SIZE + len(der),
        "header": b"",
        "signatures": [{"owner": owner.bytes_le, "data": der}],
    }))


def signatures(database: bytes) -> list[Signature]:
    """Every signature in a signature database (the contents of PK, KEK or db), in order."""
    return [
        Signature(uuid.UUID(bytes_le=entry.signature_type), uuid.UUID(bytes_le=s.owner), s.data)
        for entry in SignatureDatabase.parse(database)
        for s in entry.signatures
    ]
