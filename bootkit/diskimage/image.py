"""Bootable GPT disk images holding a bootkit sysroot, made and changed without root or mounts.

Layout: partition 1 is the ESP (FAT32), which is $BOOT, holding the bootloader at
the removable-media path, the kernels and the boot entries; partition 2 is the
physical root (ext4, label `bootkit-root`, type "Linux root (x86-64)") holding
/bootkit with the deployments, with an empty /efi where the ESP is mounted.

Every change goes through a staged sysroot in a temporary directory: the core's
operations (deploy, rollback, set-default) run on it exactly as on a real
machine, then both filesystems are made anew from it inside a copy of the image,
and the copy replaces the image in one rename. A failure leaves the image as it was.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import subprocess
import tempfile
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bootkit.base.files import fsync_dir, temp_name
from bootkit.boot import backends
from bootkit.contract import is_valid_name
from bootkit.diskimage import ext4fs, fatfs
from bootkit.errors import BootkitError
from bootkit.formats import gpt
from bootkit.secureboot import signing
from bootkit.sysroot.kernel import read_os_release
from bootkit.sysroot.transaction import Sysroot

MIB = 1 << 20
ROOT_LABEL = "bootkit-root"
ESP_LABEL = "ESP"
BOOT_DIR = "/efi"
DEFAULT_ESP_SIZE = 256 * MIB
MIN_ROOT_SIZE = 64 * MIB
# The GPT, alignment of the first partition and the backup GPT at the end.
_OVERHEAD = 2 * MIB

Report = Callable[[str], None]
# Given a source being imported, a context yielding the callback that counts its bytes.
ImportProgress = Callable[[Path], AbstractContextManager[Callable[[int], None] | None]]

_SIZE_RE = re.compile(r"\A\s*(\d+(?:\.\d+)?)\s*([KMGT]?)(?:i?B)?\s*\Z", re.IGNORECASE)
_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


def parse_size(text: str) -> int:
    """'2G', '512M', '300MiB', '1073741824' -> bytes, rounded up to whole MiB."""
    m = _SIZE_RE.match(text)
    if not m:
        raise BootkitError(
            f"invalid size {text!r}", hint="use a number with an optional unit K, M, G or T, e.g. 2G"
        )
    size = int(float(m.group(1)) * _UNITS[m.group(2).upper()])
    if size <= 0:
        raise BootkitError(f"invalid size {text!r}: must be more than zero")
    return -(-size // MIB) * MIB


def _quiet(_: str) -> None:
    pass


def _no_progress(_: Path) -> AbstractContextManager[None]:
    return contextlib.nullcontext()


@dataclass(frozen=True)
class DiskLayout:
    table: gpt.PartitionTable

    @property
    def esp(self) -> gpt.Partition:
        return self.table.find(gpt.ESP_TYPE)

    @property
    def root(self) -> gpt.Partition:
        return self.table.find(gpt.LINUX_ROOT_X86_64_TYPE)

    @classmethod
    def new(cls, size: int, esp_size: int) -> DiskLayout:
        if size < esp_size + MIN_ROOT_SIZE + _OVERHEAD:
            raise BootkitError(
                f"an image of {size // MIB} MiB leaves no room for the root filesystem "
                f"(ESP {esp_size // MIB} MiB, root at least {MIN_ROOT_SIZE // MIB} MiB)",
                hint="give a larger --size or a smaller --esp-size",
            )
        return cls(
            gpt.lay_out(
                size,
                [
                    gpt.PartitionSpec("esp", gpt.ESP_TYPE, esp_size),
                    gpt.PartitionSpec("bootkit-root", gpt.LINUX_ROOT_X86_64_TYPE),
                ],
            )
        )

    @classmethod
    def read(cls, image: Path) -> DiskLayout:
        table = gpt.read_partition_table(image)
        for type_guid in (gpt.ESP_TYPE, gpt.LINUX_ROOT_X86_64_TYPE):
            table.find(type_guid)  # refuses a disk without it
        return cls(table)


@dataclass(frozen=True)
class FilesystemIds:
    """What identifies the filesystems to the boot chain; kept across rewrites."""

    esp_serial: int
    esp_label: str
    root_uuid: uuid.UUID
    root_label: str

    @classmethod
    def new(cls) -> FilesystemIds:
        return cls(int.from_bytes(os.urandom(4), "little"), ESP_LABEL, uuid.uuid4(), ROOT_LABEL)

    @classmethod
    def read(cls, image: Path, layout: DiskLayout) -> FilesystemIds:
        serial, label = fatfs.read_volume_id(image, layout.esp.offset)
        sb = ext4fs.read_superblock(image, layout.root.offset)
        return cls(serial, label, sb.uuid, sb.label)


def default_os_name(source: Path) -> str:
    """The os-release ID of a source directory, when it is a usable stateroot name."""
    if source.is_dir():
        with contextlib.suppress(BootkitError, OSError):
            name = read_os_release(source).get("ID", "")
            if is_valid_name(name):
                return name
    return "linux"


# --- writing the filesystems ---------------------------------------------------------


def _split_boot(root: Path, work: Path) -> Path:
    """Move the staged $BOOT out of the root tree, leaving the empty mountpoint behind."""
    boot = root / BOOT_DIR.lstrip("/")
    esp_tree = work / "esp"
    mode = boot.stat().st_mode & 0o7777
    os.rename(boot, esp_tree)
    boot.mkdir()
    os.chmod(boot, mode)
    return esp_tree


def _write_filesystems(
    image: Path, layout: DiskLayout, ids: FilesystemIds, root: Path, esp_tree: Path, report: Report
) -> None:
    report(f"Writing the ESP (FAT32, {layout.esp.size // MIB} MiB)")
    fatfs.format_fat32(image, layout.esp.offset, layout.esp.size, ids.esp_label, ids.esp_serial)
    fatfs.copy_tree_in(image, layout.esp.offset, esp_tree)
    report(f"Writing the root filesystem (ext4 '{ids.root_label}', {layout.root.size // MIB} MiB)")
    ext4fs.make_ext4(image, layout.root.offset, layout.root.size, root, ids.root_label, ids.root_uuid)


def _sync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def _replacement(image: Path) -> Iterator[Path]:
    """A temp file beside `image` that becomes `image` only if the block succeeds."""
    tmp = temp_name(image)
    tmp.unlink(missing_ok=True)
    try:
        yield tmp
        _sync_file(tmp)
        os.rename(tmp, image)
        fsync_dir(image.parent)
    finally:
        tmp.unlink(missing_ok=True)


# --- creating -------------------------------------------------------------------------


def create_image(
    output: Path,
    size: int,
    bootloader: str,
    sources: Sequence[Path],
    os_name: str | None = None,
    esp_size: int = DEFAULT_ESP_SIZE,
    kargs: Sequence[str] = (),
    timeout: int = 3,
    initramfs: str = "auto",
    force: bool = False,
    report: Report = _quiet,
    progress: ImportProgress = _no_progress,
    settings: Mapping[str, Any] | None = None,
) -> list[str]:
    """Make a bootable disk image with one deployment per source, the last the default.

    `settings` are further sysroot settings (UKIs, the signing key); with a key, the
    bootloader is signed as well. Returns the deployment ids in the order deployed.
    """
    if bootloader not in backends.installable():
        raise BootkitError(
            f"cannot make an image with bootloader {bootloader!r}",
            hint=f"use one of {', '.join(backends.installable())}",
        )
    if not sources:
        raise BootkitError("no source to deploy", hint="give at least one root tree")
    for source in sources:
        if not source.exists():
            raise BootkitError(
                f"source {source} does not exist", hint="give a directory or a tar archive"
            )
    if output.exists() and not force:
        raise BootkitError(f"{output} already exists", hint="use --force to replace it")
    if not output.parent.is_dir():
        raise BootkitError(f"directory {output.parent} does not exist")
    layout = DiskLayout.new(size, esp_size)
    os_name = os_name or default_os_name(sources[0])
    ids = []
    with tempfile.TemporaryDirectory(prefix="bootkit-image-") as tmp:
        work = Path(tmp)
        root = work / "root"
        root.mkdir()
        os.chmod(root, 0o755)
        sr = Sysroot.init(
            root, os_name, bootloader, boot_dir=BOOT_DIR,
            root_arg=f"root=LABEL={ROOT_LABEL}", timeout=timeout, settings=settings,
        )
        signer = signing.configured_signer(sr.config)
        for number, source in enumerate(sources, 1):
            report(f"Deploying {source} ({number}/{len(sources)})")
            with progress(source) as bar:
                dep = sr.deploy(source, kargs=kargs, initramfs=initramfs, progress=bar)
            ids.append(dep.id)
        report(f"Installing {bootloader} on the ESP"
               + (f", signed for {signer.subject}" if signer else ""))
        sr.boot.install_bootloader(signer)
        esp_tree = _split_boot(root, work)
        with _replacement(output) as image:
            with open(image, "wb") as f:
                f.truncate(size)
            gpt.write_partition_table(image, layout.table)
            _write_filesystems(image, layout, FilesystemIds.new(), root, esp_tree, report)
    report(f"Wrote {output} ({size // MIB} MiB)")
    return ids


# --- changing an existing image ---------------------------------------------------------


def _copy_sparse(src: Path, dest: Path) -> None:
    # cp knows how to skip holes and to share extents (reflink) where the filesystem can.
    proc = subprocess.run(
        ["cp", "--sparse=always", "--reflink=auto", "--", str(src), str(dest)],
        capture_output=True, text=True, check=False,
    )
    if proc.returncode != 0:
        raise BootkitError(f"copying {src} failed: {proc.stderr.strip()}")


def _copy_region(src: Path, offset: int, size: int, dest: Path) -> None:
    """Copy `size` bytes of `src` from `offset` into the new file `dest`, keeping holes."""
    with open(src, "rb") as fin, open(dest, "wb") as fout:
        fout.truncate(size)
        pos, end = offset, offset + size
        while pos < end:
            try:
                data = os.lseek(fin.fileno(), pos, os.SEEK_DATA)
            except OSError:  # no data after pos (ENXIO)
                break
            if data >= end:
                break
            hole = min(os.lseek(fin.fileno(), data, os.SEEK_HOLE), end)
            fin.seek(data)
            fout.seek(data - offset)
            left = hole - data
            while left:
                chunk = fin.read(min(left, 1 << 20))
                fout.write(chunk)
                left -= len(chunk)
            pos = hole


def _readable_root(image: Path, layout: DiskLayout, work: Path) -> tuple[Path, int]:
    """Where to read the root filesystem from: in place, or a repaired copy of it.

    A guest that powered off without unmounting leaves changes in the journal;
    they are replayed on a copy of the partition, never on the image itself.
    """
    root = layout.root
    if not ext4fs.read_superblock(image, root.offset).needs_recovery:
        return image, root.offset
    copy = work / "root.ext4"
    _copy_region(image, root.offset, root.size, copy)
    ext4fs.replay_journal(copy)
    return copy, 0


def _stage(
    image: Path, layout: DiskLayout, work: Path, for_edit: bool = False
) -> tuple[Sysroot, ext4fs.Xattrs]:
    fs_file, offset = _readable_root(image, layout, work)
    root = work / "root"
    root.mkdir()
    xattrs = ext4fs.extract_tree(fs_file, offset, root, xattrs=for_edit)
    if fs_file != image:
        fs_file.unlink()
    sr = Sysroot(root)
    boot_dir = sr.config.boot_dir
    if boot_dir != BOOT_DIR:
        raise BootkitError(
            f"{image}: the sysroot keeps $BOOT at {boot_dir}, not on the ESP at {BOOT_DIR}",
            hint="only images made by 'bootkit image create' can be read this way",
        )
    sr.boot_path.mkdir(exist_ok=True)
    fatfs.copy_tree_out(image, layout.esp.offset, sr.boot_path)
    return sr, xattrs


@contextlib.contextmanager
def edit_image(image: Path, report: Report = _quiet) -> Iterator[Sysroot]:
    """Stage the sysroot held by `image`; when the block succeeds, write it back atomically.

    What the guest wrote (the shared /var, each deployment's /etc) comes along:
    the whole root filesystem is staged, after replaying its journal if the guest
    did not unmount it cleanly. The filesystems keep their UUID, serial and labels.
    """
    if not image.is_file():
        raise BootkitError(f"image {image} does not exist")
    layout = DiskLayout.read(image)
    with _locked(image), tempfile.TemporaryDirectory(prefix="bootkit-image-") as tmp:
        work = Path(tmp)
        report(f"Reading {image}")
        ids = FilesystemIds.read(image, layout)
        sr, xattrs = _stage(image, layout, work, for_edit=True)
        with _replacement(image) as copy:
            yield sr
            # A copy keeps whatever else the disk holds (other partitions, the GPT).
            _copy_sparse(image, copy)
            esp_tree = _split_boot(sr.path, work)
            _write_filesystems(copy, layout, ids, sr.path, esp_tree, report)
            ext4fs.write_xattrs(copy, layout.root.offset, sr.path, xattrs)


@contextlib.contextmanager
def read_image(image: Path) -> Iterator[Sysroot]:
    """Stage the sysroot held by `image` for reading only (the image is never written)."""
    if not image.is_file():
        raise BootkitError(f"image {image} does not exist")
    layout = DiskLayout.read(image)
    with tempfile.TemporaryDirectory(prefix="bootkit-image-") as tmp:
        yield _stage(image, layout, Path(tmp))[0]


@contextlib.contextmanager
def _locked(image: Path) -> Iterator[None]:
    """One change at a time per image: they share the temp file beside it."""
    fd = os.open(image, os.O_RDONLY)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise BootkitError(
                f"another bootkit command is changing {image}", hint="wait for it to finish"
            ) from None
        yield
    finally:
        os.close(fd)
