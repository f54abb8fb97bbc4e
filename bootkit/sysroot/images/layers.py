"""Importing one layer of an image: its blob read once, checked against both of its
digests, into a record (see `layerrecord`) and objects of the content store.

A layer's directory, `layers/<diff-id hex>` in the image layout, holds its `record`
and `objects/<key>`, a hardlink to the store object of each of its files, so the
store keeps them for as long as the layer is kept. A layer is imported into a temp
directory beside it, which a failure removes whole; its objects then have no other
link than the store's, and the caller's prune takes them.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import secrets
import stat
import tarfile
import zlib
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Protocol

from bootkit.base import process
from bootkit.base.files import fsync_dir, remove_path, remove_tree, syncfs
from bootkit.base.seen import READ_FLAGS
from bootkit.errors import BootkitError
from bootkit.oci.layout import ImageLayout
from bootkit.oci.manifest import Descriptor
from bootkit.sysroot.images.layerrecord import LayerRecord, diff_id_hex
from bootkit.sysroot.images.layerscan import LayerScan
from bootkit.sysroot.importers.tarheaders import BoundedTarInfo
from bootkit.sysroot.importers.tarmembers import ZSTD_MAGIC
from bootkit.sysroot.importers.tree import Progress
from bootkit.sysroot.store import ObjectStore

_GZIP_MAGIC = b"\x1f\x8b"
# What the tar reader asks of the stream at a time: a call through the hashing
# wrappers per 10 KB block (tarfile's default) costs more than the hashing.
_READ_SIZE = 64 << 10
# What may follow a layer's end-of-archive marker: tar pads to 10 KiB records, some
# writers more. A layer with more than this after its end is refused, not read on.
_TRAILER_LIMIT = 1 << 20
_PULL_AGAIN = "pull the image again"


# The file in a layer's directory that lists what the layer holds.
RECORD = "record"


def layer_dir(layout: ImageLayout, diff_id: str) -> Path:
    return layout.layers_dir / diff_id_hex(diff_id)


def import_layer(
    layout: ImageLayout, store: ObjectStore, blob: Descriptor, diff_id: str, progress: Progress
) -> LayerRecord:
    """The record of the layer `blob`, whose tar stream has `diff_id` (see import_layers)."""
    return import_layers(layout, store, [(blob, diff_id)], progress)[0]


def import_layers(
    layout: ImageLayout, store: ObjectStore, layers: Sequence[tuple[Descriptor, str]],
    progress: Progress,
) -> list[LayerRecord]:
    """The records of `layers` (blob, diff_id): those kept from earlier imports, else
    made now from their blobs, which are then emptied.

    New layers are scanned into temp directories first; then one sync makes all their
    objects durable, and only then does each record take its final name: a record
    never stands for objects a power cut could lose, and ten new layers cost one
    flush of the disk, not ten.
    """
    records: list[LayerRecord] = []
    new: dict[str, tuple[Path, Descriptor]] = {}  # diff_id: its temp directory and blob
    try:
        for blob, diff_id in layers:
            record = _kept(layout, blob, diff_id, layer_dir(layout, diff_id))
            if record is None:
                record = _scanned(layout, store, blob, diff_id, new, progress)
            elif layout.has_blob(blob.digest):
                layout.empty_blob(blob.digest)  # downloaded again after the import: not needed
            records.append(record)
        if new:
            syncfs(layout.layers_dir)
            for diff_id, (tmp, _) in new.items():
                os.rename(tmp, layer_dir(layout, diff_id))
            fsync_dir(layout.layers_dir)
    except BaseException:
        for tmp, _ in new.values():
            with contextlib.suppress(OSError):
                remove_tree(tmp)
        raise
    for _, blob in new.values():
        layout.empty_blob(blob.digest)
    return records


def _scanned(
    layout: ImageLayout, store: ObjectStore, blob: Descriptor, diff_id: str,
    new: dict[str, tuple[Path, Descriptor]], progress: Progress,
) -> LayerRecord:
    """The record of a layer not imported before, scanned into a temp directory that
    `new` then lists; a layer an image holds twice is scanned once."""
    if diff_id in new:
        return LayerRecord.load(new[diff_id][0] / RECORD)
    if not layout.has_blob(blob.digest):
        raise BootkitError(f"layer {blob.digest} is neither imported nor downloaded",
                           hint=_PULL_AGAIN)
    final = layer_dir(layout, diff_id)
    _remove_leftovers(layout.layers_dir, final.name)
    store.prepare()
    tmp = layout.layers_dir / f".{final.name}.{secrets.token_hex(8)}"
    # Only root may reach the objects: a layer's setuid files are kept with their mode.
    os.mkdir(tmp, 0o700)
    new[diff_id] = (tmp, blob)
    os.mkdir(tmp / "objects", 0o700)
    record = _read_blob(layout.blob_path(blob.digest), blob, diff_id, store, tmp, progress)
    record.save(tmp / RECORD)
    return record


def _kept(layout: ImageLayout, blob: Descriptor, diff_id: str, final: Path) -> LayerRecord | None:
    """The record an earlier import left, or None; a damaged one is removed, to be made
    again from the blob, when the blob is still there."""
    if not os.path.lexists(final):
        return None
    try:
        record = LayerRecord.load(final / RECORD)
        if record.diff_id != diff_id:
            raise BootkitError(f"layer record {final / RECORD} is of layer {record.diff_id}")
        return record
    except BootkitError as err:
        if not layout.has_blob(blob.digest):
            raise BootkitError(f"{err.message}, and the layer's blob is no longer kept",
                               hint=_PULL_AGAIN) from None
    remove_path(final)
    return None


def _remove_leftovers(layers_dir: Path, name: str) -> None:
    """Temp directories of this layer's earlier imports that a crash interrupted."""
    for entry in os.scandir(layers_dir):
        if entry.name.startswith(f".{name}."):
            remove_path(Path(entry.path))


class _Readable(Protocol):
    def read(self, size: int = -1, /) -> bytes: ...


class _Hashed:
    """A stream read through: hashed, counted, and refused past `limit` bytes."""

    def __init__(self, f: _Readable, limit: int, report: Callable[[int], None]) -> None:
        self.f = f
        self.limit = limit
        self.report = report
        self.hash = hashlib.sha256()
        self.count = 0

    def read(self, size: int = -1) -> bytes:
        data = self.f.read(size)
        self.count += len(data)
        if self.count > self.limit:
            raise _TooLong(self.limit)
        self.hash.update(data)
        self.report(len(data))
        return data

    def drain(self) -> None:
        while self.read(1 << 16):
            pass

    def digest(self) -> str:
        return f"sha256:{self.hash.hexdigest()}"


class _Unpadded:
    """A layer's tar stream that may stop right after its last file's data.

    umoci 0.4.7 (Debian 12's) writes layers so: without the padding to a full block
    after the last file, and without the zero blocks that end an archive; container
    engines read them, and their diff_id is of exactly those bytes. The missing
    padding is supplied only there, when the stream ends where the last member's data
    ends, so that a file cut short is still refused and never filled up with zeros.
    """

    def __init__(self, f: _Hashed) -> None:
        self.f = f
        self.data_end = 0  # where the data of the last member read ends in the stream
        self.pad = -1  # zeros still to supply at the end; -1 until the end is reached

    def read(self, size: int = -1) -> bytes:
        data = self.f.read(size)
        if data or self.pad == 0:
            return data
        if self.pad < 0:
            end = self.f.count
            self.pad = -end % tarfile.BLOCKSIZE if end == self.data_end else 0
        n = self.pad if size < 0 else min(size, self.pad)
        self.pad -= n
        return b"\0" * n


class _TooLong(Exception):
    def __init__(self, limit: int) -> None:
        super().__init__(limit)
        self.limit = limit


def _read_blob(
    path: Path, blob: Descriptor, diff_id: str, store: ObjectStore, tmp: Path,
    progress: Progress,
) -> LayerRecord:
    """Scan the layer at `path` into `tmp`; its record, once both digests are checked."""
    scan = LayerScan(diff_id, store, tmp)
    try:
        return _scan_blob(scan, path, blob, diff_id, progress)
    finally:
        scan.writers.close()  # before anything removes what its threads write to


def _scan_blob(
    scan: LayerScan, path: Path, blob: Descriptor, diff_id: str, progress: Progress
) -> LayerRecord:
    what = f"layer {blob.digest}"
    with open(os.open(path, READ_FLAGS), "rb") as raw:
        if not stat.S_ISREG(os.fstat(raw.fileno()).st_mode):
            raise BootkitError(f"{path} is not a regular file", hint=_PULL_AGAIN)
        # One byte over the declared size is enough to know that the blob is not it.
        compressed = _Hashed(raw, blob.size + 1, progress)
        try:
            with _tar_stream(compressed, what) as stream:
                # No limit on the stream itself: what it makes is claimed as it is written.
                tar = _Hashed(stream, 1 << 62, lambda n: None)
                unpadded = _Unpadded(tar)
                with tarfile.open(fileobj=unpadded, mode="r|",  # type: ignore[call-overload]
                                  tarinfo=BoundedTarInfo, bufsize=_READ_SIZE) as tf:
                    for member in tf:
                        scan.add_checked(member, tf)
                        unpadded.data_end = member.offset_data + member.size
                tar.limit = tar.count + _TRAILER_LIMIT
                tar.drain()
            compressed.drain()
        except _TooLong:
            raise BootkitError(f"{what} is larger than the image's manifest says, or has "
                               "data after its end", hint=_PULL_AGAIN) from None
        except (tarfile.TarError, EOFError, zlib.error) as err:
            raise BootkitError(f"{what} is not a readable tar archive: {err}",
                               hint=_PULL_AGAIN) from None
    if compressed.count != blob.size or compressed.digest() != blob.digest:
        raise BootkitError(f"{what} does not have the content its digest names",
                           hint=f"it was damaged or tampered with on its way; {_PULL_AGAIN}")
    if tar.digest() != diff_id:
        raise BootkitError(f"{what} unpacks to {tar.digest()}, not to {diff_id} as the "
                           "image's configuration says",
                           hint="the image is inconsistent; ask its publisher to rebuild it")
    return scan.record()


@contextmanager
def _tar_stream(compressed: _Hashed, what: str) -> Iterator[_Readable]:
    """The tar stream of a layer, told by its first bytes: gzip, zstd or none."""
    raw = compressed.f
    assert isinstance(raw, io.BufferedReader)
    magic = raw.peek(4)[:4]
    # Decompressed by a program of its own, on the other core while this one reads the
    # tar stream (Python cannot read zstd at all); the blob is hashed on its way in.
    program = ["gzip", "-dc"] if magic.startswith(_GZIP_MAGIC) else (
        ["zstd", "-dcq"] if magic == ZSTD_MAGIC else None)
    if program is None:
        yield compressed
        return
    with process.filtered(program, f"decompressing {what}", compressed,
                          hint=f"the layer may be corrupt; {_PULL_AGAIN}") as out:
        yield out
