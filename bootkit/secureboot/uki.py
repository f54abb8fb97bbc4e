"""Unified Kernel Images: systemd's EFI stub with kernel, initrd and command line as PE sections.

The stub finds its payload by section name (UAPI "Unified Kernel Image"
specification). Building one means appending sections after the stub's last
one: each new section starts at the next SectionAlignment boundary in memory
and the next FileAlignment boundary in the file, and its header goes into the
unused space after the stub's section table.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import pefile

from bootkit.base.files import atomic_write
from bootkit.errors import BootkitError
from bootkit.formats import bzimage
from bootkit.secureboot import pcrpolicy
from bootkit.secureboot.authenticode import PeLayout, align_up, pe_checksum

if TYPE_CHECKING:
    from bootkit.secureboot.pcrpolicy import PcrSigner

DEFAULT_STUB = Path("/usr/lib/systemd/boot/efi/linuxx64.efi.stub")

SECTION_NAME_MAX = 8  # IMAGE_SECTION_HEADER.Name is 8 bytes, NUL-padded
SECTION_HEADER_SIZE = 40
# Payload order: small metadata first, the kernel last, as systemd's ukify lays them out.
PAYLOAD_ORDER = (".osrel", ".cmdline", ".uname", ".pcrsig", ".pcrpkey", ".initrd", ".linux")
TEXT_SECTIONS = (".osrel", ".cmdline", ".uname", ".sbat")
SBAT_HEADER = "sbat,1,SBAT Version,sbat,1,https://github.com/rhboot/shim/blob/main/SBAT.md"
# Initialised, read-only data.
DATA_CHARACTERISTICS = (
    pefile.SECTION_CHARACTERISTICS["IMAGE_SCN_CNT_INITIALIZED_DATA"]
    | pefile.SECTION_CHARACTERISTICS["IMAGE_SCN_MEM_READ"]
)
X86_MACHINES = (
    pefile.MACHINE_TYPE["IMAGE_FILE_MACHINE_AMD64"],
    pefile.MACHINE_TYPE["IMAGE_FILE_MACHINE_I386"],
)


@dataclass(frozen=True)
class Section:
    name: str
    data: bytes

    def __post_init__(self) -> None:
        encoded = self.name.encode("ascii", "replace")
        if not self.name.startswith(".") or len(encoded) > SECTION_NAME_MAX:
            raise BootkitError(
                f"PE section name {self.name!r} must start with '.' and be at most "
                f"{SECTION_NAME_MAX} bytes"
            )
        if not self.data:
            raise BootkitError(f"PE section {self.name} would be empty")

    @property
    def header_name(self) -> bytes:
        return self.name.encode("ascii").ljust(SECTION_NAME_MAX, b"\0")


def _section_name(header: pefile.SectionStructure) -> str:
    name: bytes = header.Name
    return name.rstrip(b"\0").decode("ascii", "replace")


def _read(path: Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as err:
        raise BootkitError(f"cannot read {what} {path}: {err.strerror}") from None


def concatenate_initrds(images: Sequence[bytes]) -> bytes:
    """One initrd from several: the kernel unpacks cpio archives back to back."""
    # Every archive but the last is padded to 4 bytes so the next header is aligned.
    out = bytearray()
    for i, image in enumerate(images):
        out += image
        if i < len(images) - 1:
            out += bytes(align_up(len(out), 4) - len(out))
    return bytes(out)


def merge_sbat(*texts: str) -> str:
    """SBAT CSV from several sources: one header line, each component once, in order."""
    lines: list[str] = [SBAT_HEADER]
    for text in texts:
        for raw in text.replace("\0", "").splitlines():
            line = raw.strip()
            if line and not line.startswith("sbat,") and line not in lines:
                lines.append(line)
    return "\n".join(lines) + "\n"


class _Stub:
    """A parsed stub and the free room in its header area for more section headers."""

    def __init__(self, data: bytes, path: Path) -> None:
        self.path = path
        try:
            self.pe = pefile.PE(data=data, fast_load=True)
        except pefile.PEFormatError as err:
            raise BootkitError(f"{path} is not a PE image: {err}") from None
        if PeLayout.read(data).signed:
            raise BootkitError(
                f"the stub {path} is already signed",
                hint="build from an unsigned stub and sign the finished UKI with `bootkit sign`",
            )
        self.data = data
        self.table_end = (
            self.pe.sections[-1].get_file_offset() + SECTION_HEADER_SIZE
            if self.pe.sections
            else self.pe.FILE_HEADER.get_file_offset()
            + self.pe.FILE_HEADER.sizeof()
            + self.pe.FILE_HEADER.SizeOfOptionalHeader
        )

    @property
    def header_room(self) -> int:
        """How many more section headers fit before the first section's data."""
        first_data = min(
            [self.pe.OPTIONAL_HEADER.SizeOfHeaders,
             *(s.PointerToRawData for s in self.pe.sections if s.SizeOfRawData)]
        )
        free = self.data[self.table_end : first_data]
        # Only zeros may be overwritten: some linkers keep data right after the table.
        zeros = len(free) - len(free.lstrip(b"\0"))
        return zeros // SECTION_HEADER_SIZE

    def section(self, name: str) -> pefile.SectionStructure | None:
        return next((s for s in self.pe.sections if _section_name(s) == name), None)

    def section_data(self, name: str) -> bytes:
        header = self.section(name)
        if header is None:
            return b""
        data: bytes = header.get_data()[: header.Misc_VirtualSize]
        return data

    def section_text(self, name: str) -> str:
        return self.section_data(name).decode("utf-8", "replace")


def _new_header(pe: pefile.PE, section: Section, offset: int, vma: int,
                raw_size: int, file_offset: int) -> bytes:
    header = pefile.SectionStructure(pefile.PE.__IMAGE_SECTION_HEADER_format__, pe=pe)
    header.__unpack__(bytes(SECTION_HEADER_SIZE))
    header.set_file_offset(file_offset)
    header.Name = section.header_name
    header.Misc = header.Misc_VirtualSize = header.Misc_PhysicalAddress = len(section.data)
    header.VirtualAddress = vma
    header.SizeOfRawData = raw_size
    header.PointerToRawData = offset
    header.Characteristics = DATA_CHARACTERISTICS
    packed: bytes = header.__pack__()
    return packed


def _replace_in_place(image: bytearray, stub: _Stub, section: Section) -> bool:
    """Overwrite an existing stub section with `section` if it fits; False if it does not."""
    header = stub.section(section.name)
    if header is None:
        return False
    later = [s.VirtualAddress for s in stub.pe.sections if s.VirtualAddress > header.VirtualAddress]
    room = min([header.SizeOfRawData, *(vma - header.VirtualAddress for vma in later)])
    if len(section.data) > room:
        raise BootkitError(
            f"the stub's {section.name} section has room for {room} bytes, "
            f"{len(section.data)} are needed",
            hint="shorten the SBAT entries or use a stub built with a larger .sbat section",
        )
    start = header.PointerToRawData
    image[start : start + header.SizeOfRawData] = section.data.ljust(header.SizeOfRawData, b"\0")
    # pefile keeps three names for this one field; __pack__ reads the first.
    header.Misc = header.Misc_VirtualSize = header.Misc_PhysicalAddress = len(section.data)
    offset = header.get_file_offset()
    image[offset : offset + SECTION_HEADER_SIZE] = header.__pack__()
    return True


def _drop_symbol_table(image: bytearray, pe: pefile.PE) -> None:
    """Cut off a COFF symbol table (and its string table) at the end of the stub.

    Image files should not carry one (the PE format deprecates it), and new
    sections must follow the last section directly: data left between
    sections would be neither loaded nor covered by a signature.
    """
    table = pe.FILE_HEADER.PointerToSymbolTable
    if not table:
        return
    sections_end = max(s.PointerToRawData + s.SizeOfRawData for s in pe.sections)
    if table < sections_end:
        raise BootkitError("the stub's COFF symbol table lies among its sections")
    del image[table:]
    pe.FILE_HEADER.PointerToSymbolTable = 0
    pe.FILE_HEADER.NumberOfSymbols = 0


def assemble(stub_data: bytes, sections: Sequence[Section],
             stub_path: Path = DEFAULT_STUB) -> bytes:
    """The stub with `sections` added; a section the stub already has is replaced in place."""
    stub = _Stub(stub_data, stub_path)
    pe = stub.pe
    file_alignment = pe.OPTIONAL_HEADER.FileAlignment
    section_alignment = pe.OPTIONAL_HEADER.SectionAlignment
    names = [s.name for s in sections]
    if len(set(names)) != len(names):
        raise BootkitError(f"duplicate UKI sections: {', '.join(names)}")

    image = bytearray(stub_data)
    _drop_symbol_table(image, pe)
    appended = [s for s in sections if not _replace_in_place(image, stub, s)]
    if len(appended) > stub.header_room:
        raise BootkitError(
            f"the stub {stub_path} has room for {stub.header_room} more section headers, "
            f"{len(appended)} are needed",
            hint="use a stub linked with more header space (systemd's linuxx64.efi.stub has it)",
        )
    sections_end = max(s.PointerToRawData + s.SizeOfRawData for s in pe.sections)
    if any(image[sections_end:]):
        raise BootkitError(
            f"the stub {stub_path} has {len(image) - sections_end} bytes of data after its "
            "last section",
            hint="new sections would leave that data unloaded and unsigned; use a plain stub",
        )
    del image[sections_end:]
    file_offset = align_up(sections_end, file_alignment)
    vma = align_up(
        max(s.VirtualAddress + max(s.Misc_VirtualSize, s.SizeOfRawData) for s in pe.sections),
        section_alignment,
    )
    image.extend(bytes(file_offset - len(image)))
    header_offset = stub.table_end
    for section in appended:
        raw_size = align_up(len(section.data), file_alignment)
        image[header_offset : header_offset + SECTION_HEADER_SIZE] = _new_header(
            pe, section, file_offset, vma, raw_size, header_offset
        )
        image.extend(section.data)
        image.extend(bytes(raw_size - len(section.data)))
        header_offset += SECTION_HEADER_SIZE
        file_offset += raw_size
        pe.OPTIONAL_HEADER.SizeOfInitializedData += raw_size
        vma = align_up(vma + len(section.data), section_alignment)

    pe.FILE_HEADER.NumberOfSections += len(appended)
    pe.OPTIONAL_HEADER.SizeOfImage = vma
    for structure in (pe.FILE_HEADER, pe.OPTIONAL_HEADER):
        offset = structure.get_file_offset()
        packed = structure.__pack__()
        image[offset : offset + len(packed)] = packed
    checksum_at = pe.OPTIONAL_HEADER.get_field_absolute_offset("CheckSum")
    image[checksum_at : checksum_at + 4] = pe_checksum(bytes(image), checksum_at).to_bytes(
        4, "little"
    )
    return bytes(image)


def build_uki_from_files(
    output: Path,
    linux: Path,
    initrds: Sequence[Path],
    cmdline: str,
    os_release: Path,
    uname: str | None = None,
    stub: Path = DEFAULT_STUB,
    sbat: Path | None = None,
    pcr_signer: PcrSigner | None = None,
) -> None:
    """`build_uki` with the os-release and extra SBAT lines read from files."""
    sbat_text = _read(sbat, "SBAT file").decode("utf-8", "replace") if sbat else None
    build_uki(output, linux, initrds, cmdline, _read(os_release, "os-release file"),
              uname=uname, stub=stub, sbat=sbat_text, pcr_signer=pcr_signer)


def build_uki(
    output: Path,
    linux: Path,
    initrds: Sequence[Path],
    cmdline: str,
    os_release: bytes,
    uname: str | None = None,
    stub: Path = DEFAULT_STUB,
    sbat: str | None = None,
    pcr_signer: PcrSigner | None = None,
) -> None:
    """Write a Unified Kernel Image to `output` (atomically).

    `uname` defaults to the release string in the kernel's bzImage header. With
    `sbat`, the stub's SBAT entries (and the kernel's, if it has a .sbat
    section) are merged with it into the UKI's single .sbat section. With
    `pcr_signer`, the UKI carries its public key (.pcrpkey) and its signature of
    the PCR 11 values this UKI will cause (.pcrsig); see `bootkit.secureboot.pcrpolicy`.
    """
    stub_data = _read(stub, "stub")
    kernel = _read(linux, "kernel")
    try:
        stub_machine = pefile.PE(data=stub_data, fast_load=True).FILE_HEADER.Machine
    except pefile.PEFormatError as err:
        raise BootkitError(f"{stub} is not a PE image: {err}") from None
    if stub_machine in X86_MACHINES and bzimage.parse_setup_header(kernel) is None:
        raise BootkitError(f"{linux} is not an x86 bzImage kernel",
                           hint="pass the vmlinuz file of the kernel package")
    if uname is None:
        uname = bzimage.kernel_version(kernel)
        if uname is None:
            raise BootkitError(f"cannot read the kernel version from {linux}",
                               hint="give the kernel release (uname -r of that kernel)")
    initrd = concatenate_initrds([_read(p, "initrd") for p in initrds])

    payload = {
        ".osrel": os_release,
        ".cmdline": cmdline.strip().encode(),
        ".uname": uname.encode(),
        ".initrd": initrd,
        ".linux": kernel,
    }
    parsed = _Stub(stub_data, stub)
    if sbat is not None:
        payload[".sbat"] = merge_sbat(parsed.section_text(".sbat"), _kernel_sbat(kernel),
                                      sbat).encode()
    if pcr_signer is not None:
        # Signed last: the signature covers every other section as the stub will see it.
        payload[pcrpolicy.PCRPKEY] = pcr_signer.public_pem
        version = pcrpolicy.stub_version(parsed.section_data(".sdmagic"))
        payload[pcrpolicy.PCRSIG] = pcr_signer.sign(payload, version)
    sections = [Section(name, payload[name]) for name in (*PAYLOAD_ORDER, ".sbat")
                if payload.get(name)]
    atomic_write(output, assemble(stub_data, sections, stub), mode=0o644)


def _kernel_sbat(kernel: bytes) -> str:
    try:
        pe = pefile.PE(data=kernel, fast_load=True)
    except pefile.PEFormatError:
        return ""
    header = next((s for s in pe.sections if _section_name(s) == ".sbat"), None)
    return header.get_data()[: header.Misc_VirtualSize].decode("utf-8", "replace") if header else ""


@dataclass(frozen=True)
class SectionInfo:
    name: str
    vma: int
    size: int
    file_offset: int


@dataclass(frozen=True)
class UkiInfo:
    sections: tuple[SectionInfo, ...]
    cmdline: str | None
    uname: str | None
    os_release: str | None
    sbat: str | None
    signed: bool
    pcr11: pcrpolicy.PolicyCheck | None  # None when PCR 11 cannot be predicted
    pcr11_problem: str | None  # why it cannot

    def to_json(self) -> str:
        return json.dumps(
            {
                "sections": [
                    {"name": s.name, "vma": s.vma, "size": s.size, "file_offset": s.file_offset}
                    for s in self.sections
                ],
                "cmdline": self.cmdline,
                "uname": self.uname,
                "os_release": self.os_release,
                "sbat": self.sbat,
                "signed": self.signed,
                "pcr11": self.pcr11.to_dict() if self.pcr11 else None,
                "pcr11_problem": self.pcr11_problem,
            },
            indent=2,
        )


def _file_contents(data: bytes, header: pefile.SectionStructure) -> bytes:
    """A section's bytes in the file, up to its VirtualSize. Past the raw data the stub
    would see zeros; they are not made here, as a hostile VirtualSize may be gigabytes."""
    size = min(header.Misc_VirtualSize, header.SizeOfRawData)
    return data[header.PointerToRawData : header.PointerToRawData + size]


def inspect_uki(path: Path) -> UkiInfo:
    """Sections and text payloads of a UKI (or any PE image), and its PCR 11 policy."""
    data = _read(path, "image")
    try:
        pe = pefile.PE(data=data, fast_load=True)
    except pefile.PEFormatError as err:
        raise BootkitError(f"{path} is not a PE image: {err}") from None
    infos = []
    contents: dict[str, bytes] = {}
    duplicated: set[str] = set()
    larger: set[str] = set()  # measured sections the file does not hold whole
    for header in pe.sections:
        name = _section_name(header)
        infos.append(SectionInfo(name, header.VirtualAddress, header.Misc_VirtualSize,
                                 header.PointerToRawData))
        if name in contents:
            duplicated.add(name)
        if name in pcrpolicy.SIGNED_OR_MEASURED and header.Misc_VirtualSize > header.SizeOfRawData:
            larger.add(name)
        contents[name] = _file_contents(data, header)
    texts = {name: contents[name].rstrip(b"\0").decode("utf-8", "replace")
             if name in contents else None for name in TEXT_SECTIONS}
    pcr11, problem = None, None
    if duplicated:
        problem = f"sections named more than once: {', '.join(sorted(duplicated))}"
    elif larger:
        problem = f"sections larger in memory than in the file: {', '.join(sorted(larger))}"
    elif ".linux" in contents:
        try:
            version = pcrpolicy.stub_version(contents.get(".sdmagic", b""))
            pcr11 = pcrpolicy.check(contents, version)
        except BootkitError as err:
            problem = err.message
    else:
        problem = "not a UKI: no .linux section"
    return UkiInfo(
        sections=tuple(infos),
        cmdline=texts[".cmdline"],
        uname=texts[".uname"],
        os_release=texts[".osrel"],
        sbat=texts[".sbat"],
        signed=PeLayout.read(data).signed,
        pcr11=pcr11,
        pcr11_problem=problem,
    )
