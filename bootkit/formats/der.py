"""Just enough ASN.1 DER to write and read the structures of an Authenticode signature.

`cryptography` signs and parses certificates, but its PKCS#7 builder only wraps
plain data; Authenticode needs a SignedData whose content is a Microsoft
SpcIndirectDataContent, so that envelope is assembled here from DER primitives.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

# Universal tags (X.690, 8.1.2); constructed ones carry bit 0x20.
INTEGER = 0x02
BIT_STRING = 0x03
OCTET_STRING = 0x04
NULL = 0x05
OBJECT_IDENTIFIER = 0x06
BMP_STRING = 0x1E
SEQUENCE = 0x30
SET = 0x31
CONSTRUCTED = 0x20
CONTEXT = 0x80


def _length(n: int) -> bytes:
    if n < 0x80:
        return bytes([n])
    body = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return bytes([0x80 | len(body)]) + body


def tlv(tag: int, content: bytes) -> bytes:
    """One element: identifier octet, definite length, content."""
    return bytes([tag]) + _length(len(content)) + content


def sequence(*items: bytes) -> bytes:
    return tlv(SEQUENCE, b"".join(items))


def set_of(*items: bytes) -> bytes:
    # DER orders the members of a SET OF by their encodings (X.690, 11.6).
    return tlv(SET, b"".join(sorted(items)))


def integer(value: int) -> bytes:
    length = value.bit_length() // 8 + 1 if value >= 0 else (value + 1).bit_length() // 8 + 1
    return tlv(INTEGER, value.to_bytes(length, "big", signed=True))


def octet_string(value: bytes) -> bytes:
    return tlv(OCTET_STRING, value)


def null() -> bytes:
    return tlv(NULL, b"")


def bit_string(value: bytes, unused_bits: int = 0) -> bytes:
    return tlv(BIT_STRING, bytes([unused_bits]) + value)


def bmp_string_content(text: str) -> bytes:
    return text.encode("utf-16-be")


def oid(dotted: str) -> bytes:
    arcs = [int(arc) for arc in dotted.split(".")]
    if len(arcs) < 2 or arcs[0] > 2 or (arcs[0] < 2 and arcs[1] >= 40):
        raise ValueError(f"not an object identifier: {dotted}")
    body = bytearray()
    for arc in [40 * arcs[0] + arcs[1], *arcs[2:]]:
        chunk = [arc & 0x7F]
        arc >>= 7
        while arc:
            chunk.append(0x80 | (arc & 0x7F))
            arc >>= 7
        body.extend(reversed(chunk))
    return tlv(OBJECT_IDENTIFIER, bytes(body))


def explicit(number: int, content: bytes) -> bytes:
    """A context-specific, constructed tag wrapped around a complete element."""
    return tlv(CONTEXT | CONSTRUCTED | number, content)


def implicit(number: int, element: bytes, constructed: bool = True) -> bytes:
    """Re-tag a complete element with a context-specific tag, keeping its content."""
    node = parse(element)
    tag = CONTEXT | (CONSTRUCTED if constructed else 0) | number
    return tlv(tag, node.content)


def algorithm(dotted: str, with_null: bool = True) -> bytes:
    """An AlgorithmIdentifier; hash and RSA algorithms carry explicit NULL parameters."""
    return sequence(oid(dotted), null()) if with_null else sequence(oid(dotted))


@dataclass(frozen=True)
class Node:
    """One parsed element; `encoded` is the whole TLV as it appeared in the input."""

    tag: int
    content: bytes
    encoded: bytes

    @property
    def constructed(self) -> bool:
        return bool(self.tag & CONSTRUCTED)

    def children(self) -> list[Node]:
        return list(iter_elements(self.content))

    def oid(self) -> str:
        if self.tag != OBJECT_IDENTIFIER:
            raise ValueError(f"expected an object identifier, found tag 0x{self.tag:02x}")
        arcs: list[int] = []
        value = 0
        for byte in self.content:
            value = (value << 7) | (byte & 0x7F)
            if not byte & 0x80:
                arcs.append(value)
                value = 0
        first = min(arcs[0] // 40, 2)
        return ".".join(str(a) for a in [first, arcs[0] - 40 * first, *arcs[1:]])


def _read(data: bytes, offset: int) -> tuple[Node, int]:
    if offset + 2 > len(data):
        raise ValueError("truncated DER element")
    tag = data[offset]
    if tag & 0x1F == 0x1F:
        raise ValueError("multi-byte DER tags are not used in Authenticode")
    first = data[offset + 1]
    pos = offset + 2
    if first < 0x80:
        length = first
    else:
        count = first & 0x7F
        if count == 0 or count > 4:
            raise ValueError("indefinite or oversized DER length")
        length = int.from_bytes(data[pos : pos + count], "big")
        pos += count
    end = pos + length
    if end > len(data):
        raise ValueError("DER element runs past the end of its container")
    return Node(tag, bytes(data[pos:end]), bytes(data[offset:end])), end


def iter_elements(data: bytes) -> Iterator[Node]:
    offset = 0
    while offset < len(data):
        node, offset = _read(data, offset)
        yield node


def parse(data: bytes) -> Node:
    """The first element of `data`; bytes after it (padding) are ignored."""
    node, _ = _read(data, 0)
    return node
