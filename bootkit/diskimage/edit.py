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
import shutil
import stat
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from bootkit.base.files import fsync_dir
from bootkit.diskimage import ext4fs, ext4xattrs, fatfs
from bootkit.diskimage.layout import (
    BOOT_DIR,
    DiskLayout,
    FilesystemIds,
    check_staged_sysroot,
    esp_mountpoint,
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
# Share the extents of one file with another (linux/fs.h).
_FICLONE = 0x40049409


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
            copy.fill_from(image)
            esp_tree = split_boot(sr.path, work)
            write_filesystems(copy.path, layout, ids, sr.path, esp_tree, report)
            ext4xattrs.write_xattrs(copy.path, layout.root.offset, sr.path, xattrs)


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
    if not isinstance(request.source, Path):
        raise BootkitError(
            "a disk image takes a root tree (a directory or tar archive), not an OS image",
            hint="unpack the image first, e.g. 'umoci unpack', and deploy its rootfs",
        )
    open_source(request.source)  # a missing source fails before the image is read
    with edit_image(image, report=report) as sr:
        report(f"Deploying {request.source}")
        with importing(progress, request.source) as counter:
            return deploy(sr, request, counter)


def change_image(image: Path, change: Callable[[Sysroot], T], report: Report = quiet) -> T:
    """Apply `change` (rollback, set-default, ...) to the sysroot in `image`."""
    with edit_image(image, report=report) as sr:
        return change(sr)


@dataclass(frozen=True)
class Replacement:
    """The file that is to replace an image: `path` names it for the tools that write
    into it, `fd` is it, open for writing."""

    path: Path
    fd: int

    def fill_from(self, src: Path) -> None:
        """Make it a copy of `src`: shared extents where the filesystem can, else the
        data without the holes."""
        with open(src, "rb") as fin:
            size = os.fstat(fin.fileno()).st_size
            try:
                fcntl.ioctl(self.fd, _FICLONE, fin.fileno())
            except OSError:
                os.ftruncate(self.fd, 0)
                _copy_data(fin.fileno(), 0, size, self.fd)
            os.ftruncate(self.fd, size)


@contextlib.contextmanager
def replacing(image: Path) -> Iterator[Replacement]:
    """A new file beside `image` that becomes `image` only if the block succeeds.

    It is made exclusively in a directory of its own, made for this change and open
    to no one else, so nothing planted beside the image (at a name bootkit would use)
    is ever written through.
    """
    holder = Path(tempfile.mkdtemp(prefix=f".{image.name}.", suffix=".bootkit-tmp", dir=image.parent))
    path = holder / image.name
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o666)
        try:
            yield Replacement(path, fd)
            with contextlib.suppress(FileNotFoundError):  # an image replaced keeps its mode
                os.fchmod(fd, stat.S_IMODE(os.stat(image).st_mode))
            os.fsync(fd)
            if not _same_file(os.lstat(path), os.fstat(fd)):
                raise BootkitError(f"{path} was replaced while bootkit wrote it",
                                   hint="nothing else may write beside the image during a change")
            os.rename(path, image)
            fsync_dir(image.parent)
        finally:
            os.close(fd)
    finally:
        shutil.rmtree(holder, ignore_errors=True)


def _same_file(a: os.stat_result, b: os.stat_result) -> bool:
    return (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)


def _read_layout(image: Path) -> DiskLayout:
    if not image.is_file():
        raise BootkitError(f"image {image} does not exist")
    return DiskLayout.read(image)


@contextlib.contextmanager
def _locked(image: Path) -> Iterator[None]:
    """One change at a time per image: a second would undo what the first wrote."""
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
) -> tuple[Sysroot, ext4xattrs.Xattrs]:
    fs_file, offset = _readable_root(image, layout, work)
    root = work / "root"
    root.mkdir()
    xattrs = ext4fs.extract_tree(fs_file, offset, root, xattrs=for_edit)
    if fs_file != image:
        fs_file.unlink()
    check_staged_sysroot(image, root)
    sr = Sysroot(root)
    boot_dir = sr.config.boot_dir
    if boot_dir != BOOT_DIR:
        raise BootkitError(
            f"{image}: the sysroot keeps $BOOT at {boot_dir}, not on the ESP at {BOOT_DIR}",
            hint="only disk images made by bootkit can be read this way",
        )
    fatfs.copy_tree_out(image, layout.esp.offset, esp_mountpoint(image, root))
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


def _copy_region(src: Path, offset: int, size: int, dest: Path) -> None:
    """Copy `size` bytes of `src` from `offset` into the new file `dest`, keeping holes."""
    with open(src, "rb") as fin, open(dest, "xb") as fout:
        fout.truncate(size)
        _copy_data(fin.fileno(), offset, size, fout.fileno(), base=offset)


def _copy_data(fin: int, offset: int, size: int, fout: int, base: int = 0) -> None:
    """Copy what holds data in `fin` between `offset` and `offset + size` to the same
    places in `fout`, less `base`; holes are skipped."""
    pos, end = offset, offset + size
    while pos < end:
        try:
            data = os.lseek(fin, pos, os.SEEK_DATA)
        except OSError:  # no data after pos (ENXIO)
            break
        if data >= end:
            break
        hole = min(os.lseek(fin, data, os.SEEK_HOLE), end)
        while data < hole:
            chunk = os.pread(fin, min(hole - data, 1 << 20), data)
            if not chunk:
                break
            os.pwrite(fout, chunk, data - base)
            data += len(chunk)
        pos = hole
