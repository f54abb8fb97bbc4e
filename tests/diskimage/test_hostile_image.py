"""Reading and changing a disk image whose root filesystem a guest has rearranged.

Whatever ran from the image controls its root filesystem: symlinks where bootkit
keeps its records or mounts the ESP must be refused, and nothing outside the
staging directory may be read into the image or written on the host.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
from support.helpers import fails, make_tree

from bootkit.boot.backends import systemd_boot
from bootkit.diskimage import DiskLayout, ImageSpec, change_image, create_image, read_image
from bootkit.errors import BootkitError
from bootkit.sysroot.layout import Sysroot

MIB = 1 << 20
pytestmark = [
    pytest.mark.skipif(
        any(shutil.which(t) is None and not Path("/usr/sbin", t).exists()
            for t in ("mformat", "mcopy", "mke2fs", "debugfs", "e2fsck")),
        reason="needs mtools and e2fsprogs",
    ),
    pytest.mark.skipif(not systemd_boot.SYSTEMD_BOOT_EFI.is_file(),
                       reason="systemd-boot-efi not installed"),
]


@pytest.fixture(scope="module")
def pristine(tmp_path_factory: pytest.TempPathFactory) -> Path:
    base = tmp_path_factory.mktemp("pristine")
    image = base / "disk.img"
    create_image(ImageSpec(image, 110 * MIB, "systemd-boot", (make_tree(base / "tree"),),
                           os_name="test", esp_size=40 * MIB))
    return image


@pytest.fixture
def image(tmp_path: Path, pristine: Path) -> Path:
    copy = tmp_path / "disk.img"
    shutil.copyfile(pristine, copy)
    return copy


def plant(image: Path, *commands: str) -> None:
    """Change the image's root filesystem as a guest could."""
    device = f"{image}?offset={DiskLayout.read(image).root.offset}"
    proc = subprocess.run(["debugfs", "-w", "-f", "-", device], input="\n".join(commands) + "\n",
                          capture_output=True, text=True, check=True)
    assert not [line for line in proc.stderr.splitlines() if not line.startswith("debugfs ")], proc.stderr


def canary(tmp_path: Path) -> Path:
    """A host directory the image must never reach, holding one file of its own."""
    where = tmp_path / "canary"
    where.mkdir()
    (where / "HOST").write_text("the host's\n")
    return where


def untouched(where: Path) -> bool:
    return [p.name for p in where.iterdir()] == ["HOST"] and (where / "HOST").read_text() == "the host's\n"


@pytest.mark.parametrize("use", ["read", "change"])
def test_an_efi_symlink_is_refused_and_nothing_lands_behind_it(tmp_path: Path, image: Path, use: str) -> None:
    host = canary(tmp_path)
    plant(image, "rmdir /efi", f"symlink /efi {host}")
    before = image.read_bytes()
    with pytest.raises(BootkitError, match=r"/efi in the root filesystem is a symlink, not a directory"):
        if use == "read":
            with read_image(image):
                pass
        else:
            change_image(image, lambda sr: None)
    assert untouched(host)
    assert image.read_bytes() == before


def test_the_esp_lands_only_in_an_empty_efi(tmp_path: Path, image: Path) -> None:
    host = canary(tmp_path)
    plant(image, f"symlink /efi/EFI {host}")
    message = fails("image", "status", image)
    assert "/efi in the root filesystem is not empty" in message
    assert untouched(host)


@pytest.mark.parametrize("record", [
    "bootkit", "bootkit/deploy", "bootkit/deploy/test", "bootkit/deploy/test/deploy",
    "bootkit/config.json", "bootkit/state.json",
])
def test_bootkit_records_reached_through_a_symlink_are_refused(
    tmp_path: Path, image: Path, record: str
) -> None:
    # The symlink leads to a sysroot on the host (a copy of the image's own records).
    host = tmp_path / "host"
    with read_image(image) as sr:
        shutil.copytree(sr.path / "bootkit", host / "bootkit", symlinks=True)
    plant(image, f"unlink /{record}", f"symlink /{record} {host / record}")
    state = (host / "bootkit/state.json").read_bytes()
    with pytest.raises(BootkitError, match=rf"/{record} in the root filesystem is a symlink"):
        change_image(image, lambda sr: sr.state)
    assert (host / "bootkit/state.json").read_bytes() == state
    assert Sysroot(host).deployments()


def test_a_symlink_at_the_old_temp_name_is_not_written_through(tmp_path: Path, image: Path) -> None:
    victim = tmp_path / "victim"
    victim.write_text("the host's\n")
    planted = image.with_name(f".{image.name}.bootkit-tmp")

    def meanwhile(sr: Sysroot) -> None:
        planted.symlink_to(victim)

    change_image(image, meanwhile)
    assert victim.read_text() == "the host's\n"
    assert image.is_file() and not image.is_symlink()
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["disk.img", "victim", planted.name])
    with read_image(image) as sr:
        assert sr.deployments()
