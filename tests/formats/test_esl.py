"""EFI signature lists: built and read back, and a damaged database refused, never half-read."""

from __future__ import annotations

import struct
import uuid

import pytest

from bootkit.errors import BootkitError
from bootkit.formats import esl

OWNER = uuid.UUID("11111111-2222-3333-4444-555555555555")


def test_lists_read_back_in_order() -> None:
    database = esl.x509_list(b"first cert", OWNER) + esl.x509_list(b"second, longer cert", OWNER)
    found = esl.signatures(database)
    assert [s.data for s in found] == [b"first cert", b"second, longer cert"]
    assert all(s.owner == OWNER and s.signature_type == esl.EFI_CERT_X509_GUID for s in found)
    assert esl.signatures(b"") == []


def _with_sizes(list_size: int, signature_size: int, body: bytes = b"") -> bytes:
    header = esl.EFI_CERT_X509_GUID.bytes_le + struct.pack("<III", list_size, 0, signature_size)
    return header + body


GOOD = esl.x509_list(b"a certificate", OWNER)


@pytest.mark.parametrize(
    "database",
    [
        _with_sizes(esl.LIST_HEADER_SIZE + 32, 0, bytes(32)),  # no room for an owner
        _with_sizes(esl.LIST_HEADER_SIZE + 32, 16, bytes(32)),  # only an owner
        _with_sizes(esl.LIST_HEADER_SIZE - 4, 20),  # smaller than its own header
        _with_sizes(esl.LIST_HEADER_SIZE + 30, 20, bytes(30)),  # not a whole number of them
        GOOD[:-3],  # truncated
        GOOD + b"junk",  # something after the last list
    ],
    ids=["size-0", "owner-only", "short-list", "ragged", "truncated", "trailing"],
)
def test_a_damaged_database_is_refused(database: bytes) -> None:
    with pytest.raises(BootkitError, match="malformed signature list"):
        esl.signatures(database)
