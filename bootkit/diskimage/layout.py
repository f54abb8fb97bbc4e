"""What goes where on a bootkit disk image, and what identifies each filesystem.

Partition 1 is the ESP (FAT32), which is $BOOT, holding the bootloader at the
removable-media path, the kernels and the boot entries; partition 2 is the
physical root (ext4, label `bootkit-root`, type "Linux root (x86-64)") holding
/bootkit with the deployments, with an empty /efi where the ESP is mounted.
"""

from __future__ import annotations

import contextlib
import os
import re
import stat
import uuid
from dataclasses import dataclass
from pathlib import Path

from bootkit.base.filetypes import FileType
from bootkit.contract import is_valid_name
from bootkit.diskimage import ext4fs, fatfs
from bootkit.diskimage.reporting import Report
from bootkit.errors import BootkitError
from bootkit.formats import gpt
from bootkit.sysroot.kernel import read_os_release

MIB = 1 << 20
ROOT_LABEL = "bootkit-root"
ESP_LABEL = "ESP"
BOOT_DIR = "/efi"
DEFAULT_ESP_SIZE = 256 * MIB
MIN_ROOT_SIZE = 64 * MIB
# The GPT, alignment of the first partition and the backup GPT at the end.
_OVERHEAD = 2 * MIB

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
                hint="make the image larger or the ESP smaller",
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


# The directories of bootkit's own records, from the root, "*" for any name: none of
# them, and nothing directly in them, may be a symlink (a deployment's tree may hold any).
_RECORD_DIRS = ("bootkit", "bootkit/deploy", "bootkit/deploy/*", "bootkit/deploy/*/deploy")
_THROUGH_DIRS = ("the image may be malicious: bootkit works on an image's sysroot "
                 "only through real directories")


def check_staged_sysroot(image: Path, root: Path) -> None:
    """Refuse a staged root whose /bootkit records are reached through a symlink:
    the sysroot's work on them would land outside the staging directory."""
    if not _real_dir(image, root, "bootkit"):
        raise BootkitError(f"{image}: the root filesystem holds no /bootkit",
                           hint="only disk images made by bootkit can be read this way")
    dirs = [""]
    for pattern in _RECORD_DIRS:
        name = pattern.rpartition("/")[2]
        dirs = [f"{d}/{n}".lstrip("/") for d in dirs for n in _names(root, d) if name in ("*", n)]
        # Each was found in a directory already checked to hold no symlink.
        dirs = [d for d in dirs if stat.S_ISDIR(os.lstat(root / d).st_mode)]
        for d in dirs:
            for n in _names(root, d):
                if os.path.islink(root / d / n):
                    raise BootkitError(f"{image}: /{d}/{n} in the root filesystem is a symlink",
                                       hint=_THROUGH_DIRS)


def _names(root: Path, rel: str) -> list[str]:
    return sorted(os.listdir(root / rel))


def _real_dir(image: Path, root: Path, rel: str) -> bool:
    """Whether `rel` is a directory (False when missing); an error when it is anything else,
    a symlink to a directory included. Its parents must have been checked already."""
    try:
        mode = os.lstat(root / rel).st_mode
    except FileNotFoundError:
        return False
    if not stat.S_ISDIR(mode):
        kind = FileType.of_mode(mode).description
        raise BootkitError(f"{image}: /{rel} in the root filesystem is a {kind}, not a directory",
                           hint=_THROUGH_DIRS)
    return True


def esp_mountpoint(image: Path, root: Path) -> Path:
    """Where the ESP goes in the staged root: /efi, a real and empty directory (made
    if missing), so the ESP's files land nowhere else and mix with nothing."""
    rel = BOOT_DIR.lstrip("/")
    if not _real_dir(image, root, rel):
        os.mkdir(root / rel, 0o755)
    if os.listdir(root / rel):
        raise BootkitError(
            f"{image}: {BOOT_DIR} in the root filesystem is not empty",
            hint=f"the ESP is mounted there: move what the guest wrote under {BOOT_DIR} elsewhere",
        )
    return root / rel


def split_boot(root: Path, work: Path) -> Path:
    """Move the staged $BOOT out of the root tree, leaving the empty mountpoint behind."""
    boot = root / BOOT_DIR.lstrip("/")
    esp_tree = work / "esp"
    st = os.lstat(boot)
    if not stat.S_ISDIR(st.st_mode):
        raise BootkitError(f"{BOOT_DIR} in the staged root is no longer a directory",
                           hint="nothing else may change the staged image while bootkit works")
    os.rename(boot, esp_tree)
    os.mkdir(boot, 0o700)
    os.chmod(boot, stat.S_IMODE(st.st_mode))
    return esp_tree


def write_filesystems(
    image: Path, layout: DiskLayout, ids: FilesystemIds, root: Path, esp_tree: Path, report: Report
) -> None:
    """Make both filesystems anew in `image`: the ESP from `esp_tree`, the root from `root`."""
    report(f"Writing the ESP (FAT32, {layout.esp.size // MIB} MiB)")
    fatfs.format_fat32(image, layout.esp.offset, layout.esp.size, ids.esp_label, ids.esp_serial)
    fatfs.copy_tree_in(image, layout.esp.offset, esp_tree)
    report(f"Writing the root filesystem (ext4 '{ids.root_label}', {layout.root.size // MIB} MiB)")
    ext4fs.make_ext4(image, layout.root.offset, layout.root.size, root, ids.root_label, ids.root_uuid)
