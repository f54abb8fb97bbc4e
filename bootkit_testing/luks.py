"""A bootkit disk image whose root filesystem is inside LUKS2, made without device-mapper.

`bootkit image create` writes the root filesystem in plain ext4; `encrypt_root` then
takes the root partition out into a file, shrinks the filesystem by RESERVED, encrypts
it in place with `cryptsetup reencrypt --encrypt` (which works on a plain file,
offline, with neither a loop device nor device-mapper: it moves the data up behind
the 16 MiB LUKS2 header it writes in front), lets the caller enrol the volume (with
a TPM2, by `systemd-cryptenroll` on the file) and puts the partition back. The volume keeps the
filesystem's label inside, so `root=LABEL=` finds it once it is unlocked.

The passphrase (key slot 0) is the recovery one; PBKDF2 with few iterations keeps
an unlock under TCG fast: this is a test disk, not a secret.

The ESP stays in plain FAT: `read_esp_file` and `write_esp_file` reach its files
(bootkit's image commands need the root filesystem too, and cannot read this one).
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable, Sequence
from pathlib import Path

from bootkit.diskimage import MIB, DiskLayout

# The LUKS2 header (16 MiB, cryptsetup's default) and as much again to move data through.
RESERVED = 32 * MIB
PBKDF = ("--pbkdf", "pbkdf2", "--pbkdf-force-iterations", "1000")
_MTOOLS_ENV = {"MTOOLS_SKIP_CHECK": "1", "MTOOLSRC": "/dev/null"}


def _run(argv: Sequence[str | Path], env: dict[str, str] | None = None) -> str:
    proc = subprocess.run([str(a) for a in argv], capture_output=True, text=True, check=False,
                          env={**os.environ, **(env or {})})
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(map(str, argv))} failed ({proc.returncode}):\n"
                           f"{(proc.stderr or proc.stdout).strip()}")
    return proc.stdout


def _copy_range(src: Path, src_offset: int, dest: Path, dest_offset: int, size: int) -> None:
    if src.stat().st_size < src_offset + size:
        raise RuntimeError(f"{src} ends before {src_offset + size} bytes")
    with open(src, "rb") as fin, open(dest, "r+b" if dest.exists() else "wb") as fout:
        done = 0
        while done < size:
            n = os.copy_file_range(fin.fileno(), fout.fileno(), min(size - done, 1 << 30),
                                   src_offset + done, dest_offset + done)
            if n == 0:
                raise RuntimeError(f"{src} ends before {src_offset + size} bytes")
            done += n


def encrypt_root(
    image: Path, work: Path, uuid: str, passphrase: Path,
    enrol: Callable[[Path], None] | None = None,
) -> None:
    """Put the root filesystem of `image` into a LUKS2 volume with `uuid` whose key slot 0
    opens with the passphrase in the file `passphrase`; `enrol` adds to the volume (a
    file of its own then) before it goes back into the image."""
    root = DiskLayout.read(image).root
    volume = work / "root.luks"
    volume.unlink(missing_ok=True)
    _copy_range(image, root.offset, volume, 0, root.size)
    try:
        # resize2fs shrinks only a filesystem e2fsck has just checked.
        _run(["e2fsck", "-f", "-p", volume])
        _run(["resize2fs", "-f", volume, f"{(root.size - RESERVED) // 1024}K"])
        # resize2fs shortened the file to the filesystem: the reserve must be there, at the end.
        os.truncate(volume, root.size)
        _run(["cryptsetup", "reencrypt", "--encrypt", "--type", "luks2", "--batch-mode",
              "--reduce-device-size", f"{RESERVED // MIB}M", "--uuid", uuid, *PBKDF,
              "--key-file", passphrase, volume])
        if enrol is not None:
            enrol(volume)
        _copy_range(volume, 0, image, root.offset, root.size)
    finally:
        volume.unlink(missing_ok=True)


def luks_dump(image: Path, work: Path) -> str:
    """`cryptsetup luksDump` of the root partition of `image`."""
    root = DiskLayout.read(image).root
    header = work / "root.luks-header"
    header.unlink(missing_ok=True)
    _copy_range(image, root.offset, header, 0, min(root.size, RESERVED))
    try:
        return _run(["cryptsetup", "luksDump", header])
    finally:
        header.unlink()


def _esp(image: Path) -> str:
    return f"{image}@@{DiskLayout.read(image).esp.offset}"


def read_esp_file(image: Path, path: str) -> bytes:
    """The file at `path` (from the ESP's root, with /) on the ESP of `image`."""
    proc = subprocess.run(["mcopy", "-n", "-i", _esp(image), f"::{path}", "-"],
                          capture_output=True, check=False, env={**os.environ, **_MTOOLS_ENV})
    if proc.returncode != 0:
        raise RuntimeError(f"cannot read {path} from the ESP of {image}: "
                           f"{proc.stderr.decode(errors='replace').strip()}")
    return proc.stdout


def write_esp_file(image: Path, path: str, data: bytes, work: Path) -> None:
    """Replace the file at `path` on the ESP of `image` with `data`."""
    local = work / "esp-file"
    local.write_bytes(data)
    try:
        _run(["mcopy", "-o", "-i", _esp(image), local, f"::{path}"], env=_MTOOLS_ENV)
    finally:
        local.unlink()
