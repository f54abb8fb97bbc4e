"""Where the time of one boot goes: firmware, bootloader, kernel, initramfs, the test OS.

    .venv/bin/python benchmarks/boot.py [--bootloader systemd-boot|grub|both] [--runs N]

Builds a one-deployment image of the test OS (bootkit_testing/testos.py) per
bootloader, boots it N times under QEMU (TCG unless BOOTKIT_QEMU_ACCEL=kvm) and
prints one table: seconds from power-on until each milestone appears on the
serial console (median of the runs), plus the time to make the image and to
add a deployment to it with `bootkit image deploy`.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

from bootkit_testing.harness import MENU_SHOWN, Disk
from bootkit_testing.kernel import ensure_kernel
from bootkit_testing.qemu import Machine, VirtualMachine, missing_prerequisites
from bootkit_testing.testos import build_testos

MILESTONES = (
    ("firmware starts the bootloader", r"BdsDxe: starting"),
    ("bootloader shows its menu", None),  # per bootloader, from MENU_SHOWN
    ("kernel starts", r"Linux version"),
    ("initramfs /init starts", r"Run /init as init process"),
    ("hook switches root", r"bootkit: switching root"),
    ("test OS report done", r"BOOTKIT-TEST done"),
)


def time_boot(disk: Disk, name: str) -> list[float]:
    marks = []
    with VirtualMachine(Machine(disk.image), disk.workdir, name) as vm:
        for _, pattern in MILESTONES:
            vm.wait_for(pattern or MENU_SHOWN[disk.bootloader])
            marks.append(time.monotonic() - vm.started)
        vm.wait_exit()
        marks.append(vm.elapsed)
    return marks


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bootloader", choices=("systemd-boot", "grub", "both"), default="both")
    parser.add_argument("--runs", type=int, default=2)
    args = parser.parse_args()
    if missing := missing_prerequisites():
        print(f"boot benchmark: missing {', '.join(missing)}", file=sys.stderr)
        return 1
    bootloaders = ["systemd-boot", "grub"] if args.bootloader == "both" else [args.bootloader]
    kernel = ensure_kernel()
    columns: dict[str, list[str]] = {}
    with tempfile.TemporaryDirectory(prefix="bootkit-bench-") as tmp:
        work = Path(tmp)
        trees = [build_testos(work / f"v{v}", kernel, v) for v in ("1", "2")]
        for bootloader in bootloaders:
            disk = Disk(work / f"{bootloader}.img", bootloader, work)
            start = time.monotonic()
            disk.create([trees[0]])
            created = time.monotonic() - start
            runs = [time_boot(disk, f"{bootloader}-{i}") for i in range(args.runs)]
            start = time.monotonic()
            disk.bootkit("deploy", disk.image, trees[1])
            deployed = time.monotonic() - start
            medians = [statistics.median(col) for col in zip(*runs, strict=True)]
            columns[bootloader] = [f"{created:.1f}", f"{deployed:.1f}"] + [f"{m:.1f}" for m in medians]
    labels = ["bootkit image create", "bootkit image deploy"]
    labels += [f"boot: {label}" for label, _ in MILESTONES] + ["boot: QEMU exits (power-off)"]
    width = max(map(len, labels))
    print(f"{'seconds':<{width}}  " + "  ".join(f"{b:>12}" for b in columns))
    for row, label in enumerate(labels):
        print(f"{label:<{width}}  " + "  ".join(f"{columns[b][row]:>12}" for b in columns))
    print(f"(median of {args.runs} boots; accel {Machine(Path()).accel})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
