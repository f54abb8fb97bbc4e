"""Secure Boot: deployments booted as Unified Kernel Images that bootkit built and signed.

The firmware is OVMF with Secure Boot enforced and the snakeoil certificate in
its db; the image is made with `bootkit image create --uki --signing-key ...`,
so systemd-boot and every UKI carry a signature made by bootkit itself. Each
test boots its own copy of that image:

- the signed chain boots the deployment the UKI's command line names;
- that command line is the one signed: an edited `options` line in the (unsigned)
  boot entry changes nothing;
- a UKI with one byte changed in its command line is refused by the firmware,
  which then never powers off, so the test stops at the refusal line.
"""

from __future__ import annotations

import re
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from bootkit.boot.payloads import UKI_FILE
from bootkit.diskimage import edit_image, read_image
from bootkit.formats.bls import ENTRIES_DIR
from bootkit.secureboot import uki
from bootkit.sysroot.layout import Sysroot

from bootkit_testing.harness import MENU_TIMEOUT, TEST_KARGS, BootReport, Disk
from bootkit_testing.qemu import Machine, VirtualMachine
from bootkit_testing.secureboot import (
    SNAKEOIL_CERT,
    SNAKEOIL_CODE,
    SNAKEOIL_KEY,
    SNAKEOIL_PASSPHRASE,
    SNAKEOIL_VARS,
)
from bootkit_testing.testos import MARKER

from .test_boot import assert_deployment_is_root

pytestmark = pytest.mark.qemu

BOOTLOADER = "systemd-boot"
# What the kernel logs when the firmware tells it Secure Boot is on.
KERNEL_SAW_SECURE_BOOT = "secureboot: Secure boot enabled"
# systemd-boot's line when the firmware refuses to load an entry's EFI binary.
REFUSED = re.compile(r"Error loading (\S+): Access Denied")


class SignedImage:
    def __init__(self, image: Path, deployment: str) -> None:
        self.image = image
        self.deployment = deployment  # the path bootkit= names
        self.boots: list[float] = []

    def copy(self, dest: Path) -> Path:
        # Each test boots its own copy: a boot writes to the disk, some tests change it.
        subprocess.run(["cp", "--sparse=always", str(self.image), str(dest)], check=True)
        return dest


@pytest.fixture(scope="module")
def signed(
    testos_trees: dict[str, Path], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[SignedImage]:
    missing = [str(p) for p in (SNAKEOIL_CODE, SNAKEOIL_VARS, SNAKEOIL_KEY, SNAKEOIL_CERT,
                                uki.DEFAULT_STUB) if not p.is_file()]
    if missing:
        pytest.skip(f"no Secure Boot firmware or keys here (packages ovmf, systemd-boot-efi): "
                    f"missing {', '.join(missing)}")
    workdir = tmp_path_factory.mktemp("secureboot")
    passphrase = workdir / "passphrase"
    passphrase.write_bytes(SNAKEOIL_PASSPHRASE + b"\n")
    disk = Disk(workdir / "signed.img", BOOTLOADER, workdir)
    disk.bootkit("create", disk.image, testos_trees["1"], "--size", "512M", "--esp-size", "128M",
                 "--bootloader", BOOTLOADER, "--timeout", str(MENU_TIMEOUT), "--force",
                 *(f"--karg={k}" for k in TEST_KARGS),
                 "--uki", "--signing-key", SNAKEOIL_KEY, "--signing-cert", SNAKEOIL_CERT,
                 "--passphrase-file", passphrase)
    (status,) = disk.status()
    image = SignedImage(disk.image, status["path"])
    yield image
    print("\nsecure boot: boots took " + ", ".join(f"{s:.1f} s" for s in image.boots))


def secure_vm(image: Path, workdir: Path, name: str) -> VirtualMachine:
    machine = Machine(image, firmware_code=SNAKEOIL_CODE, firmware_vars=SNAKEOIL_VARS,
                      secure_boot=True)
    return VirtualMachine(machine, workdir, name)


def boot_to_report(signed: SignedImage, image: Path, workdir: Path, name: str) -> BootReport:
    with secure_vm(image, workdir, name) as vm:
        vm.wait_exit()
        report = BootReport.parse(vm.console(), vm.elapsed)
    signed.boots.append(report.seconds)
    if not report.done:
        raise vm.fail("the guest powered off without the test OS finishing its report")
    return report


def only_uki(sr: Sysroot) -> Path:
    (path,) = (sr.boot_path / "bootkit").glob(f"*/*/{UKI_FILE}")
    return path


def test_signed_uki_boots_its_deployment(signed: SignedImage, tmp_path: Path) -> None:
    image = signed.copy(tmp_path / "disk.img")
    with read_image(image) as sr:
        view = sr.boot.view()
        ((_, entry),) = view.entries
        assert entry.efi and not entry.linux, entry
        info = uki.inspect_uki(sr.boot_path / entry.efi.lstrip("/"))
    assert info.signed
    assert f"bootkit={signed.deployment}" in (info.cmdline or "").split()

    report = boot_to_report(signed, image, tmp_path, "signed")
    assert KERNEL_SAW_SECURE_BOOT in report.console
    assert report.id == "1"
    assert_deployment_is_root(report, signed.deployment)


def test_entry_options_cannot_override_the_signed_command_line(
    signed: SignedImage, tmp_path: Path
) -> None:
    image = signed.copy(tmp_path / "disk.img")
    elsewhere = "/bootkit/deploy/testos/deploy/elsewhere"
    with edit_image(image) as sr:
        (entry_file,) = (sr.boot_path / ENTRIES_DIR).glob("*.conf")
        text = entry_file.read_text()
        assert f"bootkit={signed.deployment}" in text
        entry_file.write_text(text.replace(f"bootkit={signed.deployment}", f"bootkit={elsewhere}"))

    report = boot_to_report(signed, image, tmp_path, "options-edited")
    assert KERNEL_SAW_SECURE_BOOT in report.console
    # systemd-stub ignores the entry's options under Secure Boot: the UKI's own line counts.
    assert report.bootkit_arg == signed.deployment
    assert_deployment_is_root(report, signed.deployment)


def test_changed_uki_is_refused(signed: SignedImage, tmp_path: Path) -> None:
    image = signed.copy(tmp_path / "disk.img")
    with edit_image(image) as sr:
        path = only_uki(sr)
        (cmdline,) = (s for s in uki.inspect_uki(path).sections if s.name == ".cmdline")
        data = bytearray(path.read_bytes())
        at = data.index(b" rw ", cmdline.file_offset, cmdline.file_offset + cmdline.size)
        data[at + 2] = ord("o")  # one byte: "rw" becomes "ro"
        path.write_bytes(data)
        changed = uki.inspect_uki(path)
        rel = "\\" + str(path.relative_to(sr.boot_path)).replace("/", "\\")
    assert changed.signed and " ro " in (changed.cmdline or "")

    with secure_vm(image, tmp_path, "changed") as vm:
        refused = vm.wait_for(REFUSED)
        signed.boots.append(time.monotonic() - vm.started)
        console = vm.console()
    assert refused.group(1) == rel
    # Nothing of the changed image ran.
    assert "Linux version" not in console
    assert MARKER not in console
