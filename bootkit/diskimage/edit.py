"""Changing and reading an existing disk image, without root or mounts.

Every change goes through a staged sysroot in a temporary directory: the core's
operations (deploy, rollback, set-default) run on it exactly as on a real
machine, then both filesystems are made anew from it inside a copy of the image,
and the copy replaces the image in one rename. A failure leaves the image as it was.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

from bootkit.base import process
from bootkit.base.files import fsync_dir, temp_name
from bootkit.diskimage import ext4fs, fatfs
from bootkit.diskimage.layout import (
    BOOT_DIR,
    DiskLayout,
    FilesystemIds,
    split_boot,
    write_filesystems,
)
from bootkit.diskimage.reporting import ImportProgress, Report, importing, no_progress, quiet
from bootkit.errors import BootkitError
from bootkit.records.deployment import Deployment
from bootkit.sysroot.deploy import DeployRequest, deploy
from bootkit.sysroot.importers import open_source
from bootkit.sysroot.layout import Sysroot

T = TypeVar("T")


@contextlib.contextmanager
def edit_image(image: Path, report: Report = quiet) -> Iterator[Sysroot]:
    """Stage the sysroot held by `image`; when the block succeeds, write it back atomically.

    What the guest wrote (the shared /var, each deployment's /etc) comes along:
    the whole root filesystem is staged, after replaying its journal if the guest
    did not unmount it cleanly. The filesystems keep their UUID, serial and labels.
    """
    layout = _read_layout(image)
    with _locked(image), tempfile.TemporaryDirectory(prefix="bootkit-image-") as tmp:
        work = Path(tmp)
        report(f"Reading {image}")
        ids = FilesystemIds.read(image, layout)
        sr, xattrs = _stage(image, layout, work, for_edit=True)
        with replacing(image) as copy:
            yield sr
            # A copy keeps whatever else the disk holds (other partitions, the GPT).
            _copy_sparse(image, copy)
            esp_tree = split_boot(sr.path, work)
            write_filesystems(copy, layout, ids, sr.path, esp_tree, report)
            ext4fs.write_xattrs(copy, layout.root.offset, sr.path, xattrs)


@contextlib.contextmanager
def read_image(image: Path) -> Iterator[Sysroot]:
    """Stage the sysroot held by `image` for reading only (the image is never written)."""
    layout = _read_layout(image)
    with tempfile.TemporaryDirectory(prefix="bootkit-image-") as tmp:
        yield _stage(image, layout, Path(tmp))[0]


def deploy_to_image(
    image: Path,
    request: DeployRequest,
    report: Report = quiet,
    progress: ImportProgress = no_progress,
) -> Deployment:
    """Add a deployment to `image`, keeping what was written to /etc and /var."""
    open_source(request.source)  # a missing source fails before the image is read
    with edit_image(image, report=report) as sr:
        report(f"Deploying {request.source}")
        with importing(progress, request.source) as counter:
            return deploy(sr, request, counter)


def change_image(image: Path, change: Callable[[Sysroot], T], report: Report = quiet) -> T:
    """Apply `change` (rollback, set-default, ...) to the sysroot in `image`."""
    with edit_image(image, report=report) as sr:
        return change(sr)


@contextlib.contextmanager
def replacing(image: Path) -> Iterator[Path]:
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


def _sync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _read_layout(image: Path) -> DiskLayout:
    if not image.is_file():
        raise BootkitError(f"image {image} does not exist")
    return DiskLayout.read(image)


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


# --- staging ---------------------------------------------------------------------------------


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
            hint="only disk images made by bootkit can be read this way",
        )
    sr.boot_path.mkdir(exist_ok=True)
    fatfs.copy_tree_out(image, layout.esp.offset, sr.boot_path)
    return sr, xattrs


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


def _copy_sparse(src: Path, dest: Path) -> None:
    # cp knows how to skip holes and to share extents (reflink) where the filesystem can.
    process.run(["cp", "--sparse=always", "--reflink=auto", "--", src, dest], f"copying {src}")


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
