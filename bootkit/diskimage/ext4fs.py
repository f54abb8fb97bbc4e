"""ext4 filesystems inside a disk image file, made and read with e2fsprogs (no mounts).

`mke2fs -d` fills a new filesystem from a directory; `debugfs rdump` copies one
back out. The filesystem is whatever the image's guest left, so `extract_tree`
lists it strictly first (`ext4tree`) and lets rdump write only a tree that holds
plain, unique names. rdump keeps modes, owners, times and symlinks but writes every
hard link as a separate file, skips FIFOs and device nodes and leaves symlinks
owned by whoever runs it, so `extract_tree` then restores those from the listing,
through directory descriptors (`staged`): deployments rely on hard links to share
identical files. rdump drops extended attributes too; `ext4xattrs` carries them.
"""

from __future__ import annotations

import os
import stat
import uuid
from dataclasses import dataclass
from pathlib import Path

from construct import Bytes, Const, Int16ul, Int32ul, PaddedString, Padding, Struct

from bootkit.base import process
from bootkit.base.filetypes import FileType
from bootkit.diskimage import debugfs, ext4tree, ext4xattrs, staged
from bootkit.errors import BootkitError

BLOCK_SIZE = 4096
SUPERBLOCK_OFFSET = 1024
ROOT_INODE = 2
_INCOMPAT_RECOVER = 0x4
_STATE_CLEAN = 0x1

# The leading part of the ext2/3/4 superblock, up to the volume name.
Superblock = Struct(
    Padding(0x2C),
    "mtime" / Int32ul,
    "wtime" / Int32ul,
    "mnt_count" / Int16ul,
    "max_mnt_count" / Int16ul,
    "magic" / Const(0xEF53, Int16ul),
    "state" / Int16ul,
    Padding(0x60 - 0x3C),
    "feature_incompat" / Int32ul,
    "feature_ro_compat" / Int32ul,
    "uuid" / Bytes(16),
    "volume_name" / PaddedString(16, "utf8"),
)


@dataclass(frozen=True)
class SuperblockInfo:
    uuid: uuid.UUID
    label: str
    mount_count: int
    last_mount: int
    last_write: int
    clean: bool
    needs_recovery: bool


def _as_mapped_root(argv: list[str]) -> list[str]:
    # Without root, files staged by the user would land in the filesystem owned
    # by the user's uid; in a user namespace that maps the user to 0 they are
    # root's, as an OS tree expects.
    if os.geteuid() == 0:
        return argv
    # Found here, so a missing program is named as such, not as unshare's failure.
    return ["unshare", "--map-root-user", process.find_program(argv[0]), *argv[1:]]


def read_superblock(image: Path, offset: int) -> SuperblockInfo:
    with open(image, "rb") as disk:
        disk.seek(offset + SUPERBLOCK_OFFSET)
        try:
            sb = Superblock.parse(disk.read(0x88))
        except Exception:
            raise BootkitError(f"{image}: no ext4 filesystem at offset {offset}") from None
    return SuperblockInfo(
        uuid=uuid.UUID(bytes=sb.uuid),
        label=sb.volume_name,
        mount_count=sb.mnt_count,
        last_mount=sb.mtime,
        last_write=sb.wtime,
        clean=bool(sb.state & _STATE_CLEAN),
        needs_recovery=bool(sb.feature_incompat & _INCOMPAT_RECOVER),
    )


def make_ext4(
    image: Path,
    offset: int,
    size: int,
    tree: Path,
    label: str,
    fs_uuid: uuid.UUID,
) -> None:
    """Make an ext4 filesystem of exactly `size` bytes at `offset`, holding a copy of `tree`."""
    if size % BLOCK_SIZE:
        raise BootkitError(f"ext4 size {size} is not a multiple of {BLOCK_SIZE}")
    argv = [
        "mke2fs", "-q", "-F",
        "-t", "ext4",
        "-b", str(BLOCK_SIZE),
        "-L", label,
        "-U", str(fs_uuid),
        "-d", str(tree),
        # The size argument matters: without it mke2fs would take the rest of the file.
        "-E", f"offset={offset},nodiscard",
        str(image), str(size // BLOCK_SIZE),
    ]
    process.run(_as_mapped_root(argv), "making the root filesystem")


def replay_journal(fs_file: Path) -> None:
    """Apply journalled changes left by a guest that did not unmount cleanly.

    `fs_file` must hold the filesystem alone (offset 0): after replaying,
    e2fsck reopens the device by its name and would lose an `?offset=`.
    """
    if read_superblock(fs_file, 0).needs_recovery:
        process.run(["e2fsck", "-E", "journal_only", "-p", fs_file],
                    "replaying the root filesystem's journal")


def _device_numbers(image: Path, offset: int, inodes: list[int]) -> dict[int, int]:
    outputs = debugfs.answers(image, offset, [f"stat <{ino}>" for ino in inodes])
    numbers = {}
    for ino, chunk in zip(inodes, outputs, strict=True):
        for line in chunk.splitlines():
            if line.startswith("Device major/minor number:"):
                major, minor = line.split(":", 1)[1].split("(")[0].strip().split(":")
                numbers[ino] = os.makedev(int(major), int(minor))
    return numbers


def extract_tree(image: Path, offset: int, dest: Path, xattrs: bool = True) -> ext4xattrs.Xattrs:
    """Copy the whole filesystem into the empty directory `dest`, hard links included.

    The tree is listed, and refused if it holds what no kernel makes, before rdump
    writes anything; the copy is then checked to be what was listed, and finished by
    directory descriptors (see `staged`). Returns the extended attributes, which the
    copy lacks, for `write_xattrs` (none are read without `xattrs`: a copy that is
    only looked at does not need them).
    """
    entries = ext4tree.list_tree(image, offset)
    process.run(["debugfs", "-R", f"rdump / {dest}", debugfs.device(image, offset)],
                "reading the root filesystem")
    with staged.opened(dest) as top:
        _check_copy(top, entries)
        special = [e for e in entries if _is_special(e.mode)]
        links = _hard_links(entries)
        # Relinking and making names touches directories; keep the times rdump gave them.
        touched = {e.parent for e in special} | {e.parent for names in links for e in names[1:]}
        times = {d: staged.lstat(top, d) for d in touched}
        _restore_links(top, links)
        devices = _device_numbers(image, offset, [e.inode for e in special if not stat.S_ISFIFO(e.mode)])
        for entry in special:
            _make_special(top, entry, devices.get(entry.inode, 0))
        if os.geteuid() == 0:
            for entry in entries:
                if entry.kind is FileType.SYMLINK and (entry.uid, entry.gid) != (0, 0):
                    with staged.parent(top, entry.path) as (dir_fd, name):
                        os.chown(name, entry.uid, entry.gid, dir_fd=dir_fd, follow_symlinks=False)
        for path, st in times.items():
            with staged.directory(top, path) as fd:
                os.utime(fd, ns=(st.st_atime_ns, st.st_mtime_ns))
        if not xattrs:
            return {}
        kept = [ext4tree.ROOT, *(e for e in entries if not e.kind.special)]
        found = ext4xattrs.read_xattrs(image, offset, sorted({e.inode for e in kept}))
        return {
            staged.lstat(top, e.path).st_ino: found[e.inode] for e in kept if e.inode in found
        }


def _check_copy(top: int, entries: list[ext4tree.Entry]) -> None:
    """Each directory of the copy holds the names listed (but the special files rdump
    leaves out), each of the kind listed, and nothing else."""
    expected: dict[str, dict[str, FileType]] = {"": {}}
    for e in entries:
        if e.kind is FileType.DIR:
            expected.setdefault(e.path, {})
        if not e.kind.special:
            expected.setdefault(e.parent, {})[e.name] = e.kind
    for path, names in expected.items():
        with staged.directory(top, path) as fd, os.scandir(fd) as it:
            found = {d.name: FileType.of_mode(d.stat(follow_symlinks=False).st_mode) for d in it}
        if found != names:
            raise BootkitError(
                f"the copy of {ext4tree.shown(path)} from the root filesystem is not what "
                "the filesystem lists there",
                hint="the image changed while it was read, or debugfs reads it otherwise; "
                "check it with e2fsck",
            )


def _hard_links(entries: list[ext4tree.Entry]) -> list[list[ext4tree.Entry]]:
    by_inode: dict[int, list[ext4tree.Entry]] = {}
    for entry in entries:
        if entry.kind is FileType.FILE:
            by_inode.setdefault(entry.inode, []).append(entry)
    return [names for names in by_inode.values() if len(names) > 1]


def _restore_links(top: int, links: list[list[ext4tree.Entry]]) -> None:
    """rdump wrote each name of a file as a file of its own: make them one again."""
    for first, *others in links:
        with staged.parent(top, first.path) as (src_dir, src_name):
            for other in others:
                with staged.parent(top, other.path) as (dir_fd, name):
                    os.unlink(name, dir_fd=dir_fd)
                    os.link(src_name, name, src_dir_fd=src_dir, dst_dir_fd=dir_fd,
                            follow_symlinks=False)


def _make_special(top: int, entry: ext4tree.Entry, device: int) -> None:
    with staged.parent(top, entry.path) as (dir_fd, name):
        if entry.kind is FileType.FIFO:
            os.mkfifo(name, stat.S_IMODE(entry.mode), dir_fd=dir_fd)
        else:
            os.mknod(name, entry.mode, device, dir_fd=dir_fd)
        if os.geteuid() == 0:
            os.chown(name, entry.uid, entry.gid, dir_fd=dir_fd, follow_symlinks=False)


def _is_special(mode: int) -> bool:
    # Sockets are left out: they mean nothing without the process that bound them.
    return stat.S_IFMT(mode) in _SPECIAL


_SPECIAL = {kind.format_bits for kind in (FileType.FIFO, FileType.CHAR, FileType.BLOCK)}
