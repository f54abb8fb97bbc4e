"""ext4 filesystems inside a disk image file, made and read with e2fsprogs (no mounts).

`mke2fs -d` fills a new filesystem from a directory; `debugfs rdump` copies one
back out. e2fsprogs tools address a filesystem that starts `offset` bytes into a
file as `image?offset=N`. rdump keeps modes, owners, times and symlinks but
writes every hard link as a separate file and skips FIFOs and device nodes, so
`extract_tree` restores those from a listing of inode numbers: deployments rely
on hard links to share identical files. rdump drops extended attributes too
(file capabilities, SELinux labels, what a guest's programs set): `extract_tree`
reads them with `ea_list`/`ea_get`, and `write_xattrs` sets them again in the new
filesystem with `ea_set`, which needs no privilege, unlike setting security.* on
the host's copy.
"""

from __future__ import annotations

import os
import re
import stat
import tempfile
import uuid
from dataclasses import dataclass
from pathlib import Path

from construct import Bytes, Const, Int16ul, Int32ul, PaddedString, Padding, Struct

from bootkit.base import process
from bootkit.base.filetypes import FileType
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


def _device(image: Path, offset: int) -> str:
    return f"{image}?offset={offset}"


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


@dataclass(frozen=True)
class _Entry:
    inode: int
    mode: int
    uid: int
    gid: int
    path: str


_ROOT = _Entry(ROOT_INODE, stat.S_IFDIR, 0, 0, "")


def _debugfs_script(image: Path, offset: int, commands: list[str], write: bool = False) -> str:
    """Run `commands` in one debugfs; its output. With `write`, the filesystem is changed,
    and any complaint (debugfs exits 0 whatever a command did) is an error."""
    what = "changing the root filesystem" if write else "reading the root filesystem"
    with tempfile.NamedTemporaryFile("w", prefix="bootkit-debugfs-", suffix=".cmd") as script:
        script.write("\n".join(commands) + "\n")
        script.flush()
        proc = process.run(
            ["debugfs", *(["-w"] if write else []), "-f", script.name, _device(image, offset)],
            what,
        )
    if write:
        errors = [line for line in proc.stderr.decode(errors="replace").splitlines()
                  if line.strip() and not line.startswith("debugfs ")]
        if errors:
            raise BootkitError(f"{what} failed: {errors[0]}")
    return proc.stdout.decode("utf-8", errors="surrogateescape")


def _list_tree(image: Path, offset: int) -> list[_Entry]:
    """Every name in the filesystem with its inode number, one debugfs run per tree level."""
    entries: list[_Entry] = []
    level = {ROOT_INODE: ""}
    while level:
        order = list(level.items())
        # Addressing directories by inode number avoids quoting names.
        output = _debugfs_script(image, offset, [f"ls -p <{ino}>" for ino, _ in order])
        chunks = output.split("debugfs: ls -p <")[1:]
        if len(chunks) != len(order):
            raise BootkitError("debugfs printed an unexpected listing of the root filesystem")
        next_level: dict[int, str] = {}
        for (_, parent), chunk in zip(order, chunks, strict=True):
            for line in chunk.splitlines()[1:]:
                fields = line.split("/")
                # "/inode/mode/uid/gid/name/size/"; a name never contains "/".
                if len(fields) != 8 or fields[5] in (".", ".."):
                    continue
                inode, mode = int(fields[1]), int(fields[2], 8)
                path = f"{parent}/{fields[5]}" if parent else fields[5]
                entries.append(_Entry(inode, mode, int(fields[3]), int(fields[4]), path))
                if stat.S_ISDIR(mode):
                    next_level[inode] = path
        level = next_level
    return entries


def _device_numbers(image: Path, offset: int, inodes: list[int]) -> dict[int, int]:
    if not inodes:
        return {}
    output = _debugfs_script(image, offset, [f"stat <{ino}>" for ino in inodes])
    numbers = {}
    for ino, chunk in zip(inodes, output.split("debugfs: stat <")[1:], strict=True):
        for line in chunk.splitlines():
            if line.startswith("Device major/minor number:"):
                major, minor = line.split(":", 1)[1].split("(")[0].strip().split(":")
                numbers[ino] = os.makedev(int(major), int(minor))
    return numbers


Attrs = tuple[tuple[str, bytes], ...]
# By inode number of the extracted copy on the host: hard links share them, and an
# edit that replaces a file gives it a new inode, so the old attributes do not follow.
Xattrs = dict[int, Attrs]

# ea_list prints "  NAME (LENGTH)" and, for values under 40 bytes, " = VALUE": a
# quoted string with \", \\ and \ooo escapes, or hex bytes.
_XATTR_LINE = re.compile(r"\A  (?P<name>\S+) \((?P<length>\d+)\)(?: = (?P<value>.*))?\Z")
_ESCAPE = re.compile(rb'\\([0-7]{3}|["\\])')
# Names that pass through debugfs's command line unquoted.
_SAFE_NAME = re.compile(r"\A[A-Za-z0-9._@:+-]+\Z")
# How ext4 stores small files inline: mke2fs decides that again for the new filesystem.
_INTERNAL = frozenset({"system.data"})


def _xattr_value(text: str) -> bytes:
    if text.startswith('"') and text.endswith('"') and len(text) >= 2:
        raw = text[1:-1].encode("utf-8", "surrogateescape")
        return _ESCAPE.sub(
            lambda m: bytes([int(m[1], 8)]) if len(m[1]) == 3 else m[1], raw
        )
    return bytes.fromhex(text)


def _read_xattrs(image: Path, offset: int, inodes: list[int]) -> dict[int, Attrs]:
    """The extended attributes of each inode (only those that have any)."""
    if not inodes:
        return {}
    output = _debugfs_script(image, offset, [f"ea_list <{ino}>" for ino in inodes])
    chunks = output.split("debugfs: ea_list <")[1:]
    if len(chunks) != len(inodes):
        raise BootkitError("debugfs printed an unexpected list of extended attributes")
    found: dict[int, list[tuple[str, bytes | None]]] = {}
    for ino, chunk in zip(inodes, chunks, strict=True):
        for line in chunk.splitlines()[1:]:
            m = _XATTR_LINE.match(line)
            if m is None or m["name"] in _INTERNAL:
                continue
            name, length = m["name"], int(m["length"])
            if not _SAFE_NAME.match(name):
                raise BootkitError(
                    f"cannot carry the extended attribute {name!r} of inode {ino}",
                    hint="remove it in the guest, or change the image from inside the guest",
                )
            value = _xattr_value(m["value"] or "") if m["value"] is not None or not length else None
            if value is not None and len(value) != length:
                value = None  # not what debugfs meant to print: fetched below instead
            found.setdefault(ino, []).append((name, value))
    # Long values are not printed: fetch those one by one into files.
    missing = [(ino, name) for ino, attrs in found.items() for name, value in attrs if value is None]
    fetched: dict[tuple[int, str], bytes] = {}
    if missing:
        with tempfile.TemporaryDirectory(prefix="bootkit-xattrs-") as tmp:
            files = [f"{tmp}/{n}" for n in range(len(missing))]
            _debugfs_script(image, offset, [f"ea_get -f {f} <{ino}> {name}"
                                            for f, (ino, name) in zip(files, missing, strict=True)])
            for f, key in zip(files, missing, strict=True):
                try:
                    fetched[key] = Path(f).read_bytes()
                except FileNotFoundError:
                    raise BootkitError(
                        f"debugfs could not read the extended attribute {key[1]} of inode {key[0]}"
                    ) from None
    return {
        ino: tuple((name, value if value is not None else fetched[(ino, name)]) for name, value in attrs)
        for ino, attrs in found.items()
    }


def write_xattrs(image: Path, offset: int, tree: Path, xattrs: Xattrs) -> None:
    """Set, in the filesystem made from `tree`, the attributes `extract_tree` read."""
    if not xattrs:
        return
    commands: list[str] = []
    done: set[int] = set()
    with tempfile.TemporaryDirectory(prefix="bootkit-xattrs-") as tmp:
        for entry in [_ROOT, *_list_tree(image, offset)]:
            if entry.inode in done:
                continue
            done.add(entry.inode)
            for name, value in xattrs.get(os.lstat(tree / entry.path).st_ino, ()):
                value_file = f"{tmp}/{len(commands)}"
                Path(value_file).write_bytes(value)
                commands.append(f"ea_set -f {value_file} <{entry.inode}> {name}")
        if commands:
            _debugfs_script(image, offset, commands, write=True)


def extract_tree(image: Path, offset: int, dest: Path, xattrs: bool = True) -> Xattrs:
    """Copy the whole filesystem into the empty directory `dest`, hard links included.

    Returns the extended attributes, which the copy lacks, for `write_xattrs` (none
    are read without `xattrs`: a copy that is only looked at does not need them).
    """
    process.run(["debugfs", "-R", f"rdump / {dest}", _device(image, offset)],
                "reading the root filesystem")
    entries = _list_tree(image, offset)
    by_inode: dict[int, list[_Entry]] = {}
    for entry in entries:
        if stat.S_ISREG(entry.mode):
            by_inode.setdefault(entry.inode, []).append(entry)
    links = [names for names in by_inode.values() if len(names) > 1]
    special = [e for e in entries if _is_special(e.mode)]
    # Relinking and creating names touches directories; keep the times rdump gave them.
    touched = {(dest / e.path).parent for e in special}
    touched.update((dest / e.path).parent for names in links for e in names[1:])
    times = {d: os.stat(d) for d in touched}
    for names in links:
        first = dest / names[0].path
        for other in names[1:]:
            target = dest / other.path
            os.unlink(target)
            os.link(first, target)
    devices = _device_numbers(image, offset, [e.inode for e in special if not stat.S_ISFIFO(e.mode)])
    for entry in special:
        target = dest / entry.path
        if stat.S_ISFIFO(entry.mode):
            os.mkfifo(target, stat.S_IMODE(entry.mode))
        else:
            os.mknod(target, entry.mode, devices[entry.inode])
        if os.geteuid() == 0:
            os.chown(target, entry.uid, entry.gid)
    for directory, st in times.items():
        os.utime(directory, ns=(st.st_atime_ns, st.st_mtime_ns))
    if not xattrs:
        return {}
    kept = [_ROOT, *(e for e in entries if not _is_special(e.mode) and not stat.S_ISSOCK(e.mode))]
    found = _read_xattrs(image, offset, sorted({e.inode for e in kept}))
    return {
        os.lstat(dest / e.path).st_ino: found[e.inode] for e in kept if e.inode in found
    }


def _is_special(mode: int) -> bool:
    # Sockets are left out: they mean nothing without the process that bound them.
    return stat.S_IFMT(mode) in _SPECIAL


_SPECIAL = {kind.format_bits for kind in (FileType.FIFO, FileType.CHAR, FileType.BLOCK)}
