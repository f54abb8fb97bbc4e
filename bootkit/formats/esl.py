"""EFI signature lists (UEFI 2.10, 32.4.1): what the PK, KEK and db variables hold.

Such a variable is a concatenation of EFI_SIGNATURE_LIST structures. Each list
holds signatures of one type and one size, every one an EFI_SIGNATURE_DATA: the
owner's GUID, then the signature itself (for EFI_CERT_X509_GUID, a DER certificate).
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass

from construct import Bytes, Check, ConstructError, Container, Int32ul, Struct, this

from bootkit.errors import BootkitError

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
    # A list's size is its header plus a whole number of signatures, each more than
    # an owner GUID; anything else is a damaged or hostile variable, never guessed at.
    Check(this.signature_size > OWNER_SIZE),
    Check(this.list_size >= LIST_HEADER_SIZE + this.header_size),
    Check((this.list_size - LIST_HEADER_SIZE - this.header_size) % this.signature_size == 0),
    "header" / Bytes(this.header_size),
    "signatures" / SignatureData[
        (this.list_size - LIST_HEADER_SIZE - this.header_size) // this.signature_size
    ],
)


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


def signature_lists(database: bytes) -> list[Container]:
    """Each EFI_SIGNATURE_LIST of a signature database; together they must fill it exactly."""
    found: list[Container] = []
    offset = 0
    while offset < len(database):
        try:
            entry = SignatureList.parse(database[offset:])
        except ConstructError as err:
            raise BootkitError(
                f"malformed signature list at byte {offset}: {err}".splitlines()[0]
            ) from None
        found.append(entry)
        offset += entry.list_size
    return found


def signatures(database: bytes) -> list[Signature]:
    """Every signature in a signature database (the contents of PK, KEK or db), in order."""
    return [
        Signature(uuid.UUID(bytes_le=entry.signature_type), uuid.UUID(bytes_le=s.owner), s.data)
        for entry in signature_lists(database)
        for s in entry.signatures
    ]
