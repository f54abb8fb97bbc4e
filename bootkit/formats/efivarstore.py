"""Read the UEFI variables stored in an OVMF vars image (a firmware volume).

Layout, as EDK2's variable driver writes it: a firmware volume header, a
VARIABLE_STORE_HEADER for the authenticated format, then variables, each an
AUTHENTICATED_VARIABLE_HEADER, its UTF-16 name and its data, 4-byte aligned.
"""

from __future__ import annotations

import datetime
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from construct import (
    Bytes,
    Const,
    ConstructError,
    Container,
    Int8ul,
    Int16sl,
    Int16ul,
    Int32ul,
    Int64ul,
    Struct,
)

from bootkit.errors import BootkitError

AUTHENTICATED_VARIABLE_GUID = uuid.UUID("aaf32c78-947b-439a-a180-2e144ec37792")
VARIABLE_START_ID = 0x55AA
# A variable's State loses bits (flash can only clear them) as it moves through
# its life; VAR_ADDED and VAR_ADDED_IN_DELETED_TRANSITION are live.
VAR_ADDED = 0x3F
VAR_IN_DELETED_TRANSITION = 0xFE
VAR_DELETED = 0xFD
VAR_ADDED_IN_DELETED_TRANSITION = VAR_ADDED & VAR_IN_DELETED_TRANSITION
ERASED = 0xFF

# Attributes (UEFI 2.10, 8.2).
NON_VOLATILE = 0x01
BOOTSERVICE_ACCESS = 0x02
RUNTIME_ACCESS = 0x04
TIME_BASED_AUTHENTICATED_WRITE_ACCESS = 0x20

FirmwareVolumeHeader = Struct(
    "zero_vector" / Bytes(16),
    "file_system_guid" / Bytes(16),
    "length" / Int64ul,
    "signature" / Const(b"_FVH"),
    "attributes" / Int32ul,
    "header_length" / Int16ul,
    "checksum" / Int16ul,
    "ext_header_offset" / Int16ul,
    "reserved" / Int8ul,
    "revision" / Int8ul,
)

VariableStoreHeader = Struct(
    "signature" / Bytes(16),
    "size" / Int32ul,
    "format" / Int8ul,
    "state" / Int8ul,
    "reserved" / Int16ul,
    "reserved1" / Int32ul,
)

EfiTime = Struct(
    "year" / Int16ul,
    "month" / Int8ul,
    "day" / Int8ul,
    "hour" / Int8ul,
    "minute" / Int8ul,
    "second" / Int8ul,
    "pad1" / Int8ul,
    "nanosecond" / Int32ul,
    "time_zone" / Int16sl,
    "daylight" / Int8ul,
    "pad2" / Int8ul,
)

AuthenticatedVariableHeader = Struct(
    "start_id" / Int16ul,
    "state" / Int8ul,
    "reserved" / Int8ul,
    "attributes" / Int32ul,
    "monotonic_count" / Int64ul,
    "timestamp" / Bytes(EfiTime.sizeof()),
    "pubkey_index" / Int32ul,
    "name_size" / Int32ul,
    "data_size" / Int32ul,
    "vendor_guid" / Bytes(16),
)


@dataclass(frozen=True)
class Variable:
    name: str
    vendor: uuid.UUID
    attributes: int
    data: bytes


def _align4(n: int) -> int:
    return (n + 3) & ~3


@dataclass(frozen=True)
class _Slot:
    offset: int
    header: Container | None  # None marks the end of the used area
    name: str
    data: bytes


def _store_bounds(image: bytes) -> tuple[int, int]:
    """Offsets of the first variable and of the end of the variable store."""
    try:
        volume = FirmwareVolumeHeader.parse(image)
        start = volume.header_length
        store = VariableStoreHeader.parse(image[start:])
    except ConstructError:
        raise BootkitError("not an OVMF vars image (no firmware volume header)") from None
    if uuid.UUID(bytes_le=store.signature) != AUTHENTICATED_VARIABLE_GUID:
        raise BootkitError("the vars image does not use the authenticated variable format")
    return start + VariableStoreHeader.sizeof(), min(start + store.size, len(image))


def _slots(image: bytes) -> Iterator[_Slot]:
    """Every variable record, live or deleted; the last yielded offset ends the used area."""
    offset, end = _store_bounds(image)
    while offset + AuthenticatedVariableHeader.sizeof() <= end:
        header = AuthenticatedVariableHeader.parse(image[offset:])
        if header.start_id != VARIABLE_START_ID:
            break
        name_at = offset + AuthenticatedVariableHeader.sizeof()
        data_at = name_at + header.name_size
        if data_at + header.data_size > end:
            raise BootkitError("a variable in the vars image runs past the end of the store")
        yield _Slot(offset, header, image[name_at:data_at].decode("utf-16-le").rstrip("\0"),
                    image[data_at : data_at + header.data_size])
        offset = _align4(data_at + header.data_size)
    yield _Slot(offset, None, "", b"")


def _live(slot: _Slot) -> bool:
    return slot.header is not None and slot.header.state in (
        VAR_ADDED, VAR_ADDED_IN_DELETED_TRANSITION)


def read_variables(image: bytes) -> list[Variable]:
    """The live variables of an OVMF vars image, in store order."""
    return [
        Variable(slot.name, uuid.UUID(bytes_le=slot.header.vendor_guid),
                 slot.header.attributes, slot.data)
        for slot in _slots(image) if slot.header is not None and _live(slot)
    ]


def _efi_time(moment: datetime.datetime) -> bytes:
    moment = moment.astimezone(datetime.UTC)
    return bytes(EfiTime.build({
        "year": moment.year, "month": moment.month, "day": moment.day, "hour": moment.hour,
        "minute": moment.minute, "second": moment.second, "pad1": 0, "nanosecond": 0,
        "time_zone": 0, "daylight": 0, "pad2": 0,
    }))


def set_variables(image: bytes, variables: Sequence[Variable],
                  timestamp: datetime.datetime | None = None) -> bytes:
    """`image` with `variables` written as the firmware's variable driver writes them.

    A live variable of the same name and vendor is marked deleted, the new
    record goes into the erased space after the last one. Time-based
    authenticated variables get `timestamp` (default: now); later updates
    from the OS must carry a newer one.
    """
    out = bytearray(image)
    slots = list(_slots(image))
    free, end = slots[-1].offset, _store_bounds(image)[1]
    wanted = {(v.name, v.vendor) for v in variables}
    for slot in slots[:-1]:
        if slot.header is None or not _live(slot):
            continue
        if (slot.name, uuid.UUID(bytes_le=slot.header.vendor_guid)) in wanted:
            out[slot.offset + 2] = slot.header.state & VAR_DELETED
    stamp = _efi_time(timestamp or datetime.datetime.now(datetime.UTC))
    for var in variables:
        name = (var.name + "\0").encode("utf-16-le")
        timed = var.attributes & TIME_BASED_AUTHENTICATED_WRITE_ACCESS
        record = AuthenticatedVariableHeader.build({
            "start_id": VARIABLE_START_ID, "state": VAR_ADDED, "reserved": 0,
            "attributes": var.attributes, "monotonic_count": 0,
            "timestamp": stamp if timed else bytes(EfiTime.sizeof()), "pubkey_index": 0,
            "name_size": len(name), "data_size": len(var.data),
            "vendor_guid": var.vendor.bytes_le,
        }) + name + var.data
        if free + len(record) > end:
            raise BootkitError("the vars image has no room left for more variables")
        if any(b != ERASED for b in out[free : free + len(record)]):
            raise BootkitError("the free space of the vars image is not erased")
        out[free : free + len(record)] = record
        free = _align4(free + len(record))
    return bytes(out)


def read_variables_file(path: Path) -> list[Variable]:
    try:
        return read_variables(path.read_bytes())
    except OSError as err:
        raise BootkitError(f"cannot read {path}: {err.strerror}") from None
