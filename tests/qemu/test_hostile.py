"""Hostile trees on a real disk image: refused, or harmless, and the good default still boots.

One image per bootloader starts with the test OS 1. Then three trees made by a
hostile publisher are deployed into it from the host:

- a kernel that is a symlink to a kernel on the host: the tree has no kernel of
  its own, so the deploy is refused and the image is not touched;
- a kernel version that is GRUB script (`6.1;reboot;`): refused, image untouched;
- an initramfs that is a symlink to a secret file on the host, under a title full
  of GRUB and shell syntax: deployed (not as the default), with an initramfs that
  bootkit builds, since the link does not lead to anything inside the tree; the
  secret never reaches the ESP.

The image then boots under real firmware and bootloader: the menu shows both
titles exactly as written, and the good default, test OS 1, is what boots.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from bootkit.diskimage import read_image

from bootkit_testing.harness import BootFailure, BootReport, Disk, menu_titles
from bootkit_testing.kernel import KernelTree

pytestmark = pytest.mark.qemu

GOOD_TITLE = "Bootkit Test OS 1"
# Whatever GRUB or a shell would act on, as a menu title: it must only ever be shown.
HOSTILE_TITLE = "Evil $prefix ${root}; reboot; } && echo `id` #"
SECRET = b"host secret: this must never be copied to the ESP\n"


class Hostile:
    def __init__(self, disk: Disk, trees: dict[str, Path], work: Path) -> None:
        self.disk = disk
        self.trees = trees
        self.work = work
        self.refused: list[str] = []
        self.deployed: list[str] = []

    def copy_of(self, name: str) -> Path:
        tree = self.work / name
        shutil.copytree(self.trees["2"], tree, symlinks=True)
        return tree


@pytest.fixture(scope="module", params=["systemd-boot", "grub"])
def hostile(request: pytest.FixtureRequest, testos_trees: dict[str, Path],
            tmp_path_factory: pytest.TempPathFactory) -> Iterator[Hostile]:
    bootloader = request.param
    work = tmp_path_factory.mktemp(f"hostile-{bootloader}")
    disk = Disk(work / "disk.img", bootloader, work)
    disk.create([testos_trees["1"]])
    yield Hostile(disk, testos_trees, work)


def kernel_dir(tree: Path) -> Path:
    (found,) = (tree / "usr/lib/modules").iterdir()
    return found


def refused(hostile: Hostile, tree: Path) -> str:
    """Deploy `tree` into the image; it must fail and leave the image byte for byte."""
    before = hostile.disk.image.read_bytes()
    with pytest.raises(AssertionError) as failed:
        hostile.disk.bootkit("deploy", hostile.disk.image, tree)
    assert hostile.disk.image.read_bytes() == before
    message = str(failed.value)
    assert "Traceback" not in message, message
    return message


def test_a_symlinked_kernel_is_refused(hostile: Hostile, boot_kernel: KernelTree) -> None:
    tree = hostile.copy_of("symlinked-kernel")
    vmlinuz = kernel_dir(tree) / "vmlinuz"
    vmlinuz.unlink()
    vmlinuz.symlink_to(boot_kernel.vmlinuz.resolve())  # an absolute path on the host
    assert "no kernel" in refused(hostile, tree)
    hostile.refused.append("symlinked kernel")


def test_a_kernel_version_that_is_grub_script_is_refused(hostile: Hostile) -> None:
    tree = hostile.copy_of("script-kver")
    kver = kernel_dir(tree)
    kver.rename(kver.with_name("6.1;reboot;"))
    assert "kernel version" in refused(hostile, tree)
    hostile.refused.append("kernel version")


def test_a_host_secret_never_reaches_the_esp(hostile: Hostile) -> None:
    secret = hostile.work / "secret"
    secret.write_bytes(SECRET)
    tree = hostile.copy_of("secret-initramfs")
    (kernel_dir(tree) / "initramfs.img").symlink_to(secret.resolve())
    release = tree / "usr/lib/os-release"
    release.write_text(release.read_text().replace(
        'PRETTY_NAME="Bootkit Test OS 2"', f'PRETTY_NAME="{HOSTILE_TITLE}"'))
    hostile.disk.bootkit("deploy", hostile.disk.image, tree, "--no-default")
    with read_image(hostile.disk.image) as sr:
        for directory, _dirs, files in os.walk(sr.boot_path):
            for name in files:
                assert SECRET not in (Path(directory) / name).read_bytes(), name
    titles = [row["title"] for row in hostile.disk.status()]
    assert titles == [GOOD_TITLE, HOSTILE_TITLE]
    hostile.deployed.append("secret initramfs")


def test_the_good_default_boots_with_the_menu_intact(hostile: Hostile) -> None:
    if len(hostile.refused) != 2 or not hostile.deployed:
        pytest.skip("needs the steps before it")
    try:
        report: BootReport = hostile.disk.boot()
    except BootFailure as err:
        raise AssertionError(f"the good default did not boot: {err}") from None
    assert report.id == "1"
    shown = menu_titles(report.console, [GOOD_TITLE, HOSTILE_TITLE])
    assert shown == [GOOD_TITLE, HOSTILE_TITLE], report.console[-3000:]
