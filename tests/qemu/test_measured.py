"""Measured boot: a Debian 12 root in LUKS2, unlocked by the TPM through the signed PCR 11 policy.

The disk is made once on the host: `bootkit image create --uki --pcr-key` gives
every UKI a PCR 11 policy signed with the test's PCR key, the root partition is
encrypted (bootkit_testing.luks) and enrolled once with `systemd-cryptenroll
--tpm2-public-key` against a software TPM (swtpm) whose state the guest's TPM then
is: no literal PCR binding, a passphrase in key slot 0 for recovery. The trees'
own kernel arguments (`usr/lib/bootkit/kargs.d`) name the volume, so every UKI
bootkit builds, on the host or in the guest, unlocks it. Four boots (TCG, OVMF,
Secure Boot off, a TPM 2.0 on CRB):

1. `stage`: deployment A unlocks with no passphrase; inside, `bootkit deploy`
   stages tree B from a second disk, and bootkit signs B's UKI itself; shutdown
   finalizes it;
2. `rollback`: B unlocks, with nothing enrolled again; inside, `bootkit rollback`;
3. a copy of the disk whose default UKI (A's again) has one byte of its command
   line changed: PCR 11 is not what the signature allows, and systemd-cryptsetup
   asks for the passphrase, where the test stops the guest;
4. the disk itself: A still unlocks.

Each boot's PCR 11, as the guest reads it at the end, is the value bootkit
predicted for that UKI's last boot phase. Each boot's seconds are printed.
"""

from __future__ import annotations

import dataclasses
import json
import re
import shutil
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from bootkit.boot.payloads import UKI_FILE
from bootkit.diskimage import edit_image
from bootkit.secureboot import uki
from bootkit.sysroot import enrolment

from bootkit_testing import debian, luks, tpm
from bootkit_testing.debian import TREE_A, TREE_B, Variant
from bootkit_testing.debian.crypt import ensure_crypt_base, luks_kargs
from bootkit_testing.harness import MENU_TIMEOUT, TEST_KARGS, BootReport, Disk, Run, bootkit_command
from bootkit_testing.kernel import KernelTree
from bootkit_testing.qemu import Machine
from bootkit_testing.testos import MARKER

from .test_debian import _GuestVM, assert_came_up_in, assert_status, deployments, guest_args

pytestmark = pytest.mark.qemu

OS = "debian"
BOOTLOADER = "systemd-boot"
# A boot with an update inside it, under TCG on a loaded machine.
BOOT_TIMEOUT = 600.0
# Where the guest keeps the PCR key, as an admin who deploys on the machine itself does:
# in /etc, which every deployment's /etc merge carries along.
GUEST_KEYS = "/etc/bootkit/pcr"
# systemd-cryptsetup 252 (through systemd-tty-ask-password-agent) on the console, e.g.
# "Please enter passphrase for disk bootkit-root (luks-<uuid>): (press TAB for no echo)".
PROMPT = re.compile(r"Please enter passphrase for disk (\S+) \((luks-[0-9a-f-]+)\):")
# Seen on the console when a boot went wrong; waiting for the timeout would tell nothing more.
_FAILED = re.compile(
    rf"{PROMPT.pattern}|You are in emergency mode|Entering emergency mode"
    r"|Give root password|Kernel panic|bootkit: boot failed"
)
PASSPHRASE = "bootkit recovery passphrase"


@dataclass
class MeasuredDisk:
    image: Path
    workdir: Path
    uuid: str
    tpm_state: Path
    update_disk: Path
    variants: dict[str, Variant]
    paths: dict[str, str] = field(default_factory=dict)  # variant name -> deployment path
    done: set[str] = field(default_factory=set)
    timings: list[str] = field(default_factory=list)

    def require(self, step: str) -> None:
        if step not in self.done:
            pytest.skip(f"needs the '{step}' boot, which did not pass")

    def uki(self, payload: str) -> str:
        return f"/bootkit/{OS}/{payload}/{UKI_FILE}"


def _bootkit(*args: str | Path) -> str:
    argv = [*bootkit_command(), *map(str, args)]
    proc = subprocess.run(argv, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise AssertionError(f"{' '.join(argv)} failed with status {proc.returncode}:\n"
                             f"{proc.stderr}{proc.stdout}")
    return proc.stdout


def _install_keys(tree: Path, keys: Path) -> None:
    dest = tree / GUEST_KEYS.lstrip("/")
    dest.mkdir(parents=True)
    for name in ("pcr.key", "pcr.crt"):
        shutil.copy2(keys / name, dest / name)


@pytest.fixture(scope="module")
def measured(boot_kernel: KernelTree, tmp_path_factory: pytest.TempPathFactory) -> Iterator[MeasuredDisk]:
    missing = tpm.missing_prerequisites()
    if missing:
        pytest.skip(f"cannot give the guest a TPM here, missing: {', '.join(missing)}")
    started = time.monotonic()
    try:
        base = debian.ensure_base(boot_kernel)
    except debian.DebianUnavailable as err:
        pytest.skip(str(err))
    crypt_base = ensure_crypt_base(base, boot_kernel)
    work = tmp_path_factory.mktemp("measured")
    timings = [f"Debian bases {time.monotonic() - started:.1f} s"]

    started = time.monotonic()
    keys = work / "keys"
    _bootkit("keys", "create", "--pcr", keys)
    volume = str(uuid.uuid4())
    variants = {
        "A": dataclasses.replace(TREE_A, image_kargs=(*TREE_A.image_kargs, *luks_kargs(volume))),
        "B": dataclasses.replace(TREE_B, image_kargs=(*TREE_B.image_kargs, *luks_kargs(volume))),
    }
    tree_a = debian.make_tree(work / "tree-a", crypt_base, variants["A"])
    _install_keys(tree_a, keys)
    tree_b = debian.derive_tree(work / "tree-b", tree_a, variants["B"])
    update = debian.make_update_disk(work / "update.img", tree_b, work)
    timings.append(f"trees {time.monotonic() - started:.1f} s")

    started = time.monotonic()
    disk = Disk(work / "disk.img", BOOTLOADER, work)
    created = json.loads(disk.bootkit(
        "create", disk.image, tree_a, "--size", "1G", "--esp-size", "128M",
        "--bootloader", BOOTLOADER, "--timeout", str(MENU_TIMEOUT), "--force", "--json",
        *(f"--karg={k}" for k in TEST_KARGS),
        "--uki", "--pcr-key", keys / "pcr.key", "--pcr-cert", keys / "pcr.crt",
    ))
    (dep_id,) = created["deployments"]
    (status,) = disk.status()
    # In the guest, bootkit signs with the key where the guest has it.
    with edit_image(disk.image) as sr:
        sr.config.with_changes(pcr_key=f"{GUEST_KEYS}/pcr.key",
                               pcr_cert=f"{GUEST_KEYS}/pcr.crt").save(sr.config_path)
    timings.append(f"image create {time.monotonic() - started:.1f} s")

    started = time.monotonic()
    passphrase = work / "passphrase"
    passphrase.write_text(PASSPHRASE)
    state = work / "tpm"
    with tpm.tcti(state, work / "swtpm-enrol.log") as device:
        def enrol(device_file: Path) -> None:
            argv = enrolment.enrol_command(str(device_file), keys / "pcr.pem", device, (),
                                           passphrase)
            subprocess.run(argv, check=True, capture_output=True)

        luks.encrypt_root(disk.image, work, volume, passphrase, enrol)
    timings.append(f"encrypt and enrol {time.monotonic() - started:.1f} s")
    # One TPM2 token, bound to the signed policy over PCR 11 and to no PCR value literally.
    header = luks.luks_dump(disk.image, work)
    assert re.search(r"systemd-tpm2\s+tpm2-hash-pcrs:\s+n/a\s", header), header
    assert re.search(r"tpm2-pubkey-pcrs:\s+11\s", header), header

    measured = MeasuredDisk(disk.image, work, volume, state, update, variants, timings=timings)
    measured.paths["A"] = f"/bootkit/deploy/{OS}/deploy/{dep_id}"
    assert status["path"] == measured.paths["A"]
    yield measured
    print("\nmeasured boot: " + "; ".join(measured.timings))


# --- booting with the TPM ----------------------------------------------------------------


@dataclass(frozen=True)
class Boot:
    run: Run
    report: BootReport


def _vm(measured: MeasuredDisk, image: Path, sock: Path, name: str, step: str) -> _GuestVM:
    return _GuestVM(Machine(image, tpm_socket=sock), measured.workdir, name,
                    guest_args(measured.update_disk, step))


def boot(measured: MeasuredDisk, step: str) -> Boot:
    """Boot the disk until the guest powers off after its report; fail early when the
    TPM did not unlock the root (the passphrase prompt) or the boot failed otherwise."""
    name = f"measured-{step}"
    with tpm.for_qemu(measured.tpm_state, measured.workdir / f"{name}.swtpm",
                      measured.workdir / f"{name}.swtpm.log") as sock, \
            _vm(measured, measured.image, sock, name, step) as vm:
        seen = vm.wait_for(re.compile(rf"{MARKER} done|{_FAILED.pattern}"), BOOT_TIMEOUT)
        if not seen.group(0).endswith(" done"):
            raise vm.fail(f"the boot failed: {seen.group(0)!r}")
        code = vm.wait_exit(120)
        run = Run(vm.console(), vm.elapsed, code, vm.log_path)
    report = BootReport.parse(run.console, run.seconds)
    measured.timings.append(f"boot '{step}' {run.seconds:.1f} s ({report.values.get('boot-times')})")
    return Boot(run, report)


def assert_unlocked_by_tpm(measured: MeasuredDisk, result: Boot) -> None:
    """The root is the LUKS2 volume, opened with no passphrase asked for."""
    assert not PROMPT.search(result.run.text), "the guest asked for the passphrase"
    source = f"/dev/mapper/luks-{measured.uuid}"
    assert result.report.values.get("source:/sysroot") == source, result.report.values
    assert "Finished systemd-cryptsetup@luks" in result.report.values["log:cryptsetup"]


def assert_pcr11_predicted(measured: MeasuredDisk, result: Boot, payload: str) -> None:
    """PCR 11 at the end of the boot is what bootkit predicted for the UKI's last phase."""
    path = measured.workdir / "booted-uki.efi"
    path.write_bytes(luks.read_esp_file(measured.image, measured.uki(payload)))
    check = uki.inspect_uki(path).pcr11
    assert check is not None and all(p.signed for p in check.phases), check
    assert result.report.values["pcr11"].lower() == check.phases[-1].value, (
        result.report.values["pcr11"], check)


def booted(report: BootReport) -> dict:
    (dep,) = [d for d in deployments(report, "status") if d["booted"]]
    return dep


# --- the scenario ----------------------------------------------------------------------------


def test_a_unlocks_with_the_tpm_and_stages_b(measured: MeasuredDisk) -> None:
    result = boot(measured, "stage")
    a = measured.paths["A"]
    assert_came_up_in(result.run, result.report, a, measured.variants["A"])
    assert_unlocked_by_tpm(measured, result)
    assert_pcr11_predicted(measured, result, booted(result.report)["payload"])
    staged = json.loads(result.report.values["status-staged"])["staged"]
    assert staged is not None and staged["version"] == TREE_B.os_release.version_id, staged
    measured.paths["B"] = staged["path"]
    measured.done.add("stage")


def test_b_unlocks_without_enrolling_again(measured: MeasuredDisk) -> None:
    measured.require("stage")
    a, b = measured.paths["A"], measured.paths["B"]
    result = boot(measured, "rollback")
    assert_came_up_in(result.run, result.report, b, measured.variants["B"])
    assert_unlocked_by_tpm(measured, result)
    # B's UKI was built and signed in the guest, by the deploy of the first boot.
    assert_pcr11_predicted(measured, result, booted(result.report)["payload"])
    assert_status(deployments(result.report, "status"), [b, a], default=b, booted=b)
    after = json.loads(result.report.values["status-after"])["deployments"]
    assert_status(after, [a, b], default=a, booted=b)
    measured.paths["default-payload"] = next(d["payload"] for d in after if d["path"] == a)
    measured.done.add("rollback")


def test_a_changed_uki_asks_for_the_passphrase(measured: MeasuredDisk, tmp_path: Path) -> None:
    measured.require("rollback")
    image = tmp_path / "changed.img"
    subprocess.run(["cp", "--sparse=always", str(measured.image), str(image)], check=True)
    path = measured.uki(measured.paths["default-payload"])
    data = bytearray(luks.read_esp_file(image, path))
    original = tmp_path / "original-uki.efi"
    original.write_bytes(data)
    (cmdline,) = (s for s in uki.inspect_uki(original).sections if s.name == ".cmdline")
    at = data.index(b" rw ", cmdline.file_offset, cmdline.file_offset + cmdline.size)
    data[at + 2] = ord("o")  # one byte: "rw" becomes "ro"
    luks.write_esp_file(image, path, bytes(data), tmp_path)
    changed = tmp_path / "changed-uki.efi"
    changed.write_bytes(data)
    # bootkit's own prediction: none of the signed PCR 11 values is the one this UKI causes.
    check = uki.inspect_uki(changed).pcr11
    assert check is not None and check.phases and not any(p.signed for p in check.phases), check

    name = "measured-changed"
    started = time.monotonic()
    with tpm.for_qemu(measured.tpm_state, tmp_path / "swtpm", tmp_path / "swtpm.log") as sock, \
            _vm(measured, image, sock, name, "report") as vm:
        seen = vm.wait_for(re.compile(rf"{MARKER} done|{_FAILED.pattern}"), BOOT_TIMEOUT)
        seconds = time.monotonic() - started
        console = vm.console()
    measured.timings.append(f"boot of the changed UKI to the prompt {seconds:.1f} s")
    prompt = PROMPT.search(seen.group(0))
    assert prompt is not None, f"expected the passphrase prompt, saw {seen.group(0)!r}"
    assert prompt.group(2) == f"luks-{measured.uuid}"
    # The kernel of the changed UKI started (Secure Boot is off): only the TPM said no.
    assert "Linux version" in console
    assert "bootkit: switching root" not in console


def test_a_still_unlocks_after_the_changed_copy(measured: MeasuredDisk) -> None:
    measured.require("rollback")
    a, b = measured.paths["A"], measured.paths["B"]
    result = boot(measured, "report")
    assert_came_up_in(result.run, result.report, a, measured.variants["A"])
    assert_unlocked_by_tpm(measured, result)
    assert_pcr11_predicted(measured, result, booted(result.report)["payload"])
    assert_status(deployments(result.report, "status"), [a, b], default=a, booted=a)
