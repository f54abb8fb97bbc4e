"""A deploy inside the Debian test guest under TCG, bootkit against tar.

    .venv/bin/python benchmarks/guest.py [--bootloader systemd-boot|grub] [--bootkit CHECKOUT]
                                         [--profile]

Prints one table. What it measures:

(d) inside the Debian 12 guest of the QEMU tests (bootkit_testing.debian; TCG unless
    BOOTKIT_QEMU_ACCEL=kvm), `bootkit deploy --no-stage` of the test tree B from the
    tar archive on the update disk, as the tests' `update` step runs it, into a
    system that runs tree A; against `tar -xf` of the same archive on the same
    filesystem, then `sync`. Both in the same boot, after the archive was read once.

Target: (d) < 30 s of wall time. Each cell also gives the CPU seconds (user + sys)
it took, which is what TCG makes dear.

The guest's bootkit comes from this checkout, or from --bootkit's: the same run with
another checkout gives the figure to compare with. --profile runs the deploy under
cProfile instead (slower; no tar) and prints the functions that took longest in the
guest. The Debian base is the tests' cached one (.cache/debian), built first if there
is none; the guest's report and its 'bench-deploy' and 'bench-profile' steps are
bootkit_testing/debian/guest_report.py's.
"""

from __future__ import annotations

import argparse
import re
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from unittest import mock

from bootkit_testing import debian, harness, qemu
from bootkit_testing.benchtable import print_table
from bootkit_testing.debian import TREE_A, TREE_B
from bootkit_testing.harness import BootReport, Disk
from bootkit_testing.kernel import KernelUnavailable, ensure_kernel
from bootkit_testing.testos import MARKER

REPO = Path(__file__).resolve().parents[1]
STEPS = {False: "bench-deploy", True: "bench-profile"}
TARGET_SECONDS = 30.0
# A boot with a full import inside it, under TCG on a shared machine.
BOOT_TIMEOUT = 900.0
_FAILED = re.compile(
    r"Entering emergency mode|Kernel panic|bootkit: boot failed|root account is locked"
)


def log(message: str) -> None:
    print(f"bench: {message}", file=sys.stderr, flush=True)


class _GuestVM(qemu.VirtualMachine):
    """The harness's VM with the update disk and the step after its own arguments."""

    def __init__(self, disk: Disk, update_disk: Path, step: str) -> None:
        super().__init__(qemu.Machine(disk.image), disk.workdir, f"{disk.bootloader}-{step}")
        self.extra = [
            "-drive", f"if=none,id=update,format=raw,readonly=on,file={update_disk}",
            "-device", "virtio-blk-pci,drive=update",
            "-fw_cfg", f"name={debian.STEP_FW_CFG},string={step}",
        ]

    def __enter__(self) -> _GuestVM:
        # The harness makes the command line in one function; this adds to it.
        command = qemu.qemu_command
        with mock.patch.object(qemu, "qemu_command", lambda m, v: [*command(m, v), *self.extra]):
            super().__enter__()
        return self


def prepare(work: Path, bootloader: str, checkout: Path) -> tuple[Disk, Path]:
    """An image running tree A, and the update disk holding tree B's archive."""
    try:
        kernel = ensure_kernel()
        base = debian.ensure_base(kernel)
    except (KernelUnavailable, debian.DebianUnavailable) as err:
        raise SystemExit(f"bench: {err}") from None
    tree_a = debian.make_tree(work / "tree-a", base, TREE_A, checkout)
    tree_b = debian.derive_tree(work / "tree-b", tree_a, TREE_B)
    update_disk = debian.make_update_disk(work / "update.img", tree_b, work)
    disk = Disk(work / "disk.img", bootloader, work / "vm")
    disk.bootkit(
        "create", disk.image, tree_a, "--size", "2G", "--esp-size", "128M",
        "--bootloader", bootloader, "--timeout", str(harness.MENU_TIMEOUT), "--force",
        *(f"--karg={k}" for k in harness.TEST_KARGS),
    )
    return disk, update_disk


def boot(disk: Disk, update_disk: Path, step: str) -> BootReport:
    with _GuestVM(disk, update_disk, step) as vm:
        seen = vm.wait_for(re.compile(rf"{MARKER} done|{_FAILED.pattern}"), BOOT_TIMEOUT)
        if not seen.group(0).endswith(" done"):
            raise SystemExit(f"bench: the boot failed, see {vm.log_path}")
        vm.wait_exit(120)
        return BootReport.parse(vm.console(), vm.elapsed)


def timing(report: BootReport, key: str) -> tuple[float, float]:
    """Wall and CPU seconds of what the guest timed as `key` ("<wall> <user> <sys>")."""
    value = report.values.get(f"bench:{key}")
    if value is None:
        error = report.values.get("step-error", "no timing reported")
        raise SystemExit(f"bench: the guest's step failed: {error}")
    wall, user, system = map(float, value.split())
    return wall, user + system


def cell(wall: float, cpu: float) -> str:
    return f"{wall:.1f} s ({cpu:.1f} s CPU)"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bootloader", choices=("systemd-boot", "grub"), default="systemd-boot")
    parser.add_argument("--bootkit", type=Path, default=REPO, metavar="CHECKOUT",
                        help="the checkout whose bootkit the guest runs (default: this one)")
    parser.add_argument("--profile", action="store_true",
                        help="run the deploy under cProfile and print where its time went")
    args = parser.parse_args(argv)
    if missing := [*qemu.missing_prerequisites(), *debian.missing_prerequisites()]:
        print(f"bench: missing {', '.join(missing)}", file=sys.stderr)
        return 1
    with tempfile.TemporaryDirectory(prefix="bootkit-bench-guest-") as tmp:
        started = time.monotonic()
        disk, update_disk = prepare(Path(tmp), args.bootloader, args.bootkit.resolve())
        log(f"image of tree A and update disk made in {time.monotonic() - started:.0f} s; booting")
        report = boot(disk, update_disk, STEPS[args.profile])
    deploy = timing(report, "deploy")
    # Under the profiler the deploy is slower, and tar is not run.
    reference = "-" if args.profile else cell(*timing(report, "tar"))
    files = report.values.get("bench:files", "?")
    rows = [
        ("(d) in-guest deploy of the Debian tree under TCG", cell(*deploy), reference,
         f"< {TARGET_SECONDS:.0f} s ({'met' if deploy[0] < TARGET_SECONDS else 'MISSED'})"),
    ]
    print_table(rows, "tar -xf + sync",
                f"one boot ({report.seconds:.0f} s), {files} entries, accel "
                f"{qemu.Machine(Path()).accel}, bootkit from {args.bootkit}"
                + (", deploy under cProfile" if args.profile else ""))
    if args.profile:
        print("\nIn the guest, by time spent in the function itself (seconds: own, cumulative):")
        for key in sorted(k for k in report.values if k.startswith("profile:")):
            print(f"  {report.values[key]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
