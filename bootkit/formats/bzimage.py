"""The x86 Linux boot protocol's setup header in a bzImage (Documentation/arch/x86/boot.rst)."""

from __future__ import annotations

from construct import Const, ConstructError, Container, Int8ul, Int16ul, Int32ul, Struct

SETUP_HEADER_OFFSET = 0x1F1
# kernel_version is a pointer relative to the start of the real-mode setup code.
KERNEL_VERSION_BASE = 0x200

SetupHeader = Struct(
    "setup_sects" / Int8ul,  # 0x1f1
    "root_flags" / Int16ul,
    "syssize" / Int32ul,
    "ram_size" / Int16ul,
    "vid_mode" / Int16ul,
    "root_dev" / Int16ul,
    "boot_flag" / Const(0xAA55, Int16ul),  # 0x1fe
    "jump" / Int16ul,
    "header" / Const(b"HdrS"),  # 0x202
    "version" / Int16ul,  # 0x206
    "realmode_swtch" / Int32ul,
    "start_sys_seg" / Int16ul,
    "kernel_version" / Int16ul,  # 0x20e
)


def parse_setup_header(image: bytes) -> Container | None:
    """The setup header, or None when `image` is not an x86 bzImage."""
    try:
        return SetupHeader.parse(image[SETUP_HEADER_OFFSET:])
    except ConstructError:
        return None


def kernel_version(image: bytes) -> str | None:
    """The release string `uname -r` prints for this kernel, or None if it has none."""
    header = parse_setup_header(image)
    if header is None or header.kernel_version == 0:
        return None
    start = KERNEL_VERSION_BASE + header.kernel_version
    end = image.find(b"\0", start, start + 256)
    if end < 0:
        return None
    words = image[start:end].decode("ascii", "replace").split()
    return words[0] if words else None
