"""Authenticode signatures for PE images (UEFI Secure Boot).

The image hash follows Microsoft's "Windows Authenticode Portable Executable
Signature Format": the headers without the checksum and the certificate-table
directory entry, then each section's raw data in file order, then whatever
follows the last section up to the certificate table. The signature is a
PKCS#7 SignedData whose content is an SpcIndirectDataContent carrying that
hash, stored in a WIN_CERTIFICATE at the end of the file.
"""

from __future__ import annotations

import array
import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import pefile
from construct import Bytes, Const, Int16ul, Int32ul, Struct, this
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from bootkit.base.files import atomic_write
from bootkit.errors import BootkitError
from bootkit.formats import der

# Object identifiers (PKCS#7, PKCS#9, NIST, Microsoft Authenticode).
OID_SIGNED_DATA = "1.2.840.113549.1.7.2"
OID_CONTENT_TYPE = "1.2.840.113549.1.9.3"
OID_MESSAGE_DIGEST = "1.2.840.113549.1.9.4"
OID_SHA256 = "2.16.840.1.101.3.4.2.1"
OID_RSA_ENCRYPTION = "1.2.840.113549.1.1.1"
SPC_INDIRECT_DATA_OBJID = "1.3.6.1.4.1.311.2.1.4"
SPC_SP_OPUS_INFO_OBJID = "1.3.6.1.4.1.311.2.1.12"
SPC_PE_IMAGE_DATAOBJ = "1.3.6.1.4.1.311.2.1.15"

WIN_CERT_REVISION_2_0 = 0x0200
WIN_CERT_TYPE_PKCS_SIGNED_DATA = 0x0002
# The certificate table and each entry in it start on a quadword boundary.
CERT_TABLE_ALIGNMENT = 8

WinCertificateHeader = Struct(
    "length" / Int32ul,  # header plus certificate, without the alignment padding
    "revision" / Int16ul,
    "certificate_type" / Int16ul,
)

WinCertificate = Struct(
    "length" / Int32ul,
    "revision" / Const(WIN_CERT_REVISION_2_0, Int16ul),
    "certificate_type" / Const(WIN_CERT_TYPE_PKCS_SIGNED_DATA, Int16ul),
    "certificate" / Bytes(this.length - WinCertificateHeader.sizeof()),
)

SECURITY_DIRECTORY = pefile.DIRECTORY_ENTRY["IMAGE_DIRECTORY_ENTRY_SECURITY"]


def align_up(value: int, alignment: int) -> int:
    return -(-value // alignment) * alignment


@dataclass(frozen=True)
class PeLayout:
    """The offsets that Authenticode hashing and signing need, read once with pefile."""

    checksum_offset: int
    security_entry_offset: int
    size_of_headers: int
    sections: tuple[tuple[int, int], ...]  # (PointerToRawData, SizeOfRawData) in file order
    cert_table_offset: int
    cert_table_size: int

    @classmethod
    def read(cls, data: bytes) -> PeLayout:
        try:
            pe = pefile.PE(data=data, fast_load=True)
        except pefile.PEFormatError as err:
            raise BootkitError(f"not a PE image: {err}") from None
        directories = pe.OPTIONAL_HEADER.DATA_DIRECTORY
        if len(directories) <= SECURITY_DIRECTORY:
            raise BootkitError("PE image has no certificate-table directory entry")
        security = directories[SECURITY_DIRECTORY]
        sections = sorted(
            (s.PointerToRawData, s.SizeOfRawData) for s in pe.sections if s.SizeOfRawData
        )
        layout = cls(
            checksum_offset=pe.OPTIONAL_HEADER.get_field_absolute_offset("CheckSum"),
            security_entry_offset=security.get_file_offset(),
            size_of_headers=pe.OPTIONAL_HEADER.SizeOfHeaders,
            sections=tuple(sections),
            cert_table_offset=security.VirtualAddress,
            cert_table_size=security.Size,
        )
        # No pe.close(): for in-memory data it only runs a full garbage collection.
        layout._check(len(data))
        return layout

    def _check(self, file_size: int) -> None:
        for start, size in self.sections:
            if start + size > file_size:
                raise BootkitError("PE section data runs past the end of the file")
        if self.cert_table_size and (
            self.cert_table_offset + self.cert_table_size != file_size
            or self.cert_table_offset < self.end_of_sections
        ):
            # Anything after the certificate table would be unsigned data.
            raise BootkitError("PE certificate table is not at the end of the file")

    @property
    def end_of_sections(self) -> int:
        return max([self.size_of_headers, *(start + size for start, size in self.sections)])

    @property
    def signed(self) -> bool:
        return self.cert_table_size != 0


def image_digest(data: bytes, layout: PeLayout | None = None) -> bytes:
    """SHA-256 Authenticode hash of a PE image (its certificate table, if any, excluded)."""
    layout = layout or PeLayout.read(data)
    view = memoryview(data)
    digest = hashlib.sha256()
    digest.update(view[: layout.checksum_offset])
    digest.update(view[layout.checksum_offset + 4 : layout.security_entry_offset])
    digest.update(view[layout.security_entry_offset + 8 : layout.size_of_headers])
    for start, size in layout.sections:
        digest.update(view[start : start + size])
    end = layout.cert_table_offset if layout.signed else len(data)
    if end > layout.end_of_sections:
        digest.update(view[layout.end_of_sections : end])
    return digest.digest()


def pe_checksum(data: bytes, checksum_offset: int) -> int:
    """The PE optional header CheckSum: 16-bit ones' complement sum plus the file length."""
    words = array.array("H")
    words.frombytes(data[: len(data) & ~1])
    if array.array("H", b"\x01\x00")[0] != 1:
        words.byteswap()
    total = sum(words) - int.from_bytes(data[checksum_offset : checksum_offset + 2], "little")
    total -= int.from_bytes(data[checksum_offset + 2 : checksum_offset + 4], "little")
    if len(data) & 1:
        total += data[-1]
    while total > 0xFFFF:
        total = (total & 0xFFFF) + (total >> 16)
    return (total + len(data)) & 0xFFFFFFFF


def spc_indirect_data_content(digest: bytes) -> bytes:
    """SpcIndirectDataContent naming a PE image and its SHA-256 hash."""
    # SpcPeImageData with no flags and the conventional "<<<Obsolete>>>" file link.
    obsolete = der.tlv(der.CONTEXT | 0, der.bmp_string_content("<<<Obsolete>>>"))
    pe_image_data = der.sequence(der.bit_string(b""), der.explicit(0, der.explicit(2, obsolete)))
    return der.sequence(
        der.sequence(der.oid(SPC_PE_IMAGE_DATAOBJ), pe_image_data),
        der.sequence(der.algorithm(OID_SHA256), der.octet_string(digest)),
    )


def _attribute(type_oid: str, value: bytes) -> bytes:
    return der.sequence(der.oid(type_oid), der.set_of(value))


# UEFI firmware (EDK2's image verification) checks RSA signatures only.
SigningKey = rsa.RSAPrivateKey


def key_matches(key: SigningKey, certificate: x509.Certificate) -> bool:
    """Whether `certificate` is the certificate of `key`'s key pair."""
    der = (serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return bool(certificate.public_key().public_bytes(*der) == key.public_key().public_bytes(*der))


def signed_data(digest: bytes, key: SigningKey, certificate: x509.Certificate,
                chain: Sequence[x509.Certificate] = ()) -> bytes:
    """PKCS#7 ContentInfo(SignedData) over an SpcIndirectDataContent for `digest`."""
    if not key_matches(key, certificate):
        raise BootkitError("the signing key does not belong to the certificate",
                           hint="pass the key and certificate of one key pair")
    content = spc_indirect_data_content(digest)
    # Authenticode hashes the SpcIndirectDataContent without its own tag and length.
    content_digest = hashlib.sha256(der.parse(content).content).digest()
    attributes = [
        _attribute(OID_CONTENT_TYPE, der.oid(SPC_INDIRECT_DATA_OBJID)),
        _attribute(OID_MESSAGE_DIGEST, der.octet_string(content_digest)),
        _attribute(SPC_SP_OPUS_INFO_OBJID, der.sequence()),
    ]
    # The signature covers the attributes encoded as a SET; they travel as [0] IMPLICIT.
    attribute_set = der.set_of(*attributes)
    signature = key.sign(attribute_set, padding.PKCS1v15(), hashes.SHA256())
    issuer_and_serial = der.sequence(
        certificate.issuer.public_bytes(), der.integer(certificate.serial_number)
    )
    signer_info = der.sequence(
        der.integer(1),
        issuer_and_serial,
        der.algorithm(OID_SHA256),
        der.implicit(0, attribute_set),
        der.algorithm(OID_RSA_ENCRYPTION),
        der.octet_string(signature),
    )
    certificates = [c.public_bytes(serialization.Encoding.DER) for c in (certificate, *chain)]
    body = der.sequence(
        der.integer(1),
        der.set_of(der.algorithm(OID_SHA256)),
        der.sequence(der.oid(SPC_INDIRECT_DATA_OBJID), der.explicit(0, content)),
        der.tlv(der.CONTEXT | der.CONSTRUCTED | 0, b"".join(certificates)),
        der.set_of(signer_info),
    )
    return der.sequence(der.oid(OID_SIGNED_DATA), der.explicit(0, body))


def sign_image(data: bytes, key: SigningKey, certificate: x509.Certificate,
               chain: Sequence[x509.Certificate] = (), replace: bool = False) -> bytes:
    """Return `data` with an Authenticode signature appended and the checksum updated."""
    layout = PeLayout.read(data)
    image = bytearray(data)
    if layout.signed:
        if not replace:
            raise BootkitError("the image is already signed",
                               hint="ask for the existing signature to be replaced")
        del image[layout.cert_table_offset :]
        image[layout.security_entry_offset : layout.security_entry_offset + 8] = bytes(8)
    # The padding that puts the certificate table on a quadword boundary is part of
    # the hashed trailing data, exactly as a verifier sees it.
    image.extend(bytes(align_up(len(image), CERT_TABLE_ALIGNMENT) - len(image)))
    unsigned = PeLayout.read(bytes(image))
    pkcs7 = signed_data(image_digest(bytes(image), unsigned), key, certificate, chain)
    entry = WinCertificate.build({
        "length": WinCertificateHeader.sizeof() + len(pkcs7),
        "certificate": pkcs7,
    })
    entry += bytes(align_up(len(entry), CERT_TABLE_ALIGNMENT) - len(entry))
    table_offset = len(image)
    image.extend(entry)
    offset = unsigned.security_entry_offset
    image[offset : offset + 4] = table_offset.to_bytes(4, "little")
    image[offset + 4 : offset + 8] = len(entry).to_bytes(4, "little")
    checksum = pe_checksum(bytes(image), unsigned.checksum_offset)
    image[unsigned.checksum_offset : unsigned.checksum_offset + 4] = checksum.to_bytes(4, "little")
    return bytes(image)


@dataclass(frozen=True)
class EmbeddedSignature:
    revision: int
    certificate_type: int
    pkcs7: bytes

    def certificates(self) -> list[x509.Certificate]:
        from cryptography.hazmat.primitives.serialization import pkcs7

        return pkcs7.load_der_pkcs7_certificates(self.pkcs7)

    def signed_digest(self) -> bytes:
        """The image hash recorded in the SpcIndirectDataContent."""
        signed = der.parse(self.pkcs7).children()[1].children()[0]
        content_info = signed.children()[2]
        indirect = content_info.children()[1].children()[0]
        return indirect.children()[1].children()[1].content


def embedded_signatures(data: bytes) -> list[EmbeddedSignature]:
    """The WIN_CERTIFICATE entries of a PE image, in file order."""
    layout = PeLayout.read(data)
    found: list[EmbeddedSignature] = []
    offset, end = layout.cert_table_offset, layout.cert_table_offset + layout.cert_table_size
    while layout.signed and offset + WinCertificateHeader.sizeof() <= end:
        header = WinCertificateHeader.parse(data[offset:])
        if header.length < WinCertificateHeader.sizeof() or offset + header.length > end:
            raise BootkitError("malformed WIN_CERTIFICATE entry in the certificate table")
        start = offset + WinCertificateHeader.sizeof()
        found.append(EmbeddedSignature(header.revision, header.certificate_type,
                                       data[start : offset + header.length]))
        offset += align_up(header.length, CERT_TABLE_ALIGNMENT)
    return found


def sign_file(source: Path, output: Path, key: SigningKey, certificate: x509.Certificate,
              replace: bool = False) -> None:
    """Sign the PE image `source` into `output` (written atomically; may be the same path)."""
    try:
        data = source.read_bytes()
    except OSError as err:
        raise BootkitError(f"cannot read {source}: {err.strerror}") from None
    atomic_write(output, sign_image(data, key, certificate, replace=replace))
