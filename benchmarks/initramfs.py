"""bootkit's initramfs against dracut's, for the same Debian kernel: build time, size, boot time.

    .venv/bin/python benchmarks/initramfs.py [--kernel-root DIR] [--runs N] [--no-dracut]
        [--no-boot] [--boot-runs N] [--bootloader systemd-boot|grub]

The kernel root is a dpkg -x'ed kernel package (boot/vmlinuz-<kver>,
lib/modules/<kver>/), by default $BOOTKIT_TEST_KERNEL_DIR or .cache/kernel/root.
dracut needs modules.dep, which an unpacked package lacks, so it gets a
hard-linked copy of the modules with depmod run on it (not timed).

Prints two tables. The first: build time, size and content of each image; the
target for bootkit's default image is < 1 s and < 5 MB.

The second: how long a boot takes from kernel start to switch_root with each
initramfs. The test OS (bootkit_testing/testos.py) is deployed on one disk image per
initramfs: as is (bootkit builds the initramfs at deploy time), and with a dracut
image carrying the bootkit module as the tree's own
usr/lib/modules/<kver>/initramfs.img: one generic --no-hostonly build, one with
only the modules needed to mount a virtio root (both built for this table only,
and shown in the first one too). dracut runs with bootkit's module from a
symlinked copy of its base directory, so /usr/lib/dracut stays untouched.

Each image boots under QEMU (TCG unless BOOTKIT_QEMU_ACCEL=kvm) and the times
are the kernel's printk timestamps on the serial console, median of the boots:
"kernel" until `Run /init as init process` (unpacking the initramfs included),
"initramfs" from there until the test OS's /sbin/init logs INIT_STARTED, its
first act after switch_root. The clock starts when the kernel does, after the
firmware, the boot loader and the EFI stub. A boot counts only when the test OS
then finishes its report.
"""

from __future__ import annotations

import argparse
import functools
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from bootkit.diskimage import DiskLayout, fatfs
from bootkit.initramfs import build_initramfs, read_image
from bootkit.initramfs.reader import members

from bootkit_testing.dracut import dracut_base_with_bootkit
from bootkit_testing.harness import BootReport, Disk
from bootkit_testing.kernel import KernelTree, KernelUnavailable, configured_root
from bootkit_testing.kernel import find_kernel as find_kernel_tree
from bootkit_testing.qemu import BootFailure, Machine, missing_prerequisites, strip_terminal_codes
from bootkit_testing.testos import INIT_STARTED, build_testos

# The dracut images that boot the test OS, and how they are built. The minimal one
# holds only what mounts root=LABEL=... from a virtio disk: udev for the label and
# for loading the disk's driver, the drivers, and base for /etc/initrd-release,
# without which systemd does not run as an initrd.
DRACUT_BOOT_IMAGES = (
    ("dracut --no-hostonly --add bootkit", ("--no-hostonly", "--add", "bootkit")),
    (
        "dracut minimal (bootkit udev base, 3 drivers)",
        (
            "--no-hostonly",
            "--modules",
            "bootkit systemd-udevd udev-rules base",
            "--drivers",
            "virtio_pci virtio_blk ext4",
        ),
    ),
)
# A printk line on the console: "[   12.345678] message".
_STAMP = r"\[\s*(\d+\.\d+)\] "
INIT_RUN = re.compile(_STAMP + re.escape("Run /init as init process"))
NEW_ROOT_INIT = re.compile(_STAMP + re.escape(INIT_STARTED))


def find_kernel(root: Path) -> tuple[str, Path]:
    for modules in sorted((root / "lib/modules").glob("*")) + sorted(
        (root / "usr/lib/modules").glob("*")
    ):
        if (modules / "kernel").is_dir():
            return modules.name, modules
    sys.exit(f"no lib/modules/<kver>/kernel under {root}; pass --kernel-root")


def timed(build: Callable[[], object], runs: int) -> float:
    times: list[float] = []
    for _ in range(runs):
        start = time.perf_counter()
        build()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def describe(image: Path) -> tuple[int, int, str]:
    segments = read_image(image)
    return image.stat().st_size, len(members(segments)), "+".join(s.compression for s in segments)


def depmod_copy(modules: Path, kver: str, work: Path) -> Path:
    root = work / "kernel-root"
    target = root / "lib/modules" / kver
    shutil.copytree(modules, target, copy_function=os.link)
    subprocess.run(["depmod", "-b", str(root), kver], check=True)
    return target


def dracut(
    kver: str, moddir: Path, out: Path, options: Sequence[str], work: Path, base: Path | None = None
) -> None:
    """Build `out` with the host's dracut; `base` replaces its base directory (/usr/lib/dracut)."""
    conf = work / "dracut.conf.d"
    conf.mkdir(exist_ok=True)
    env = {**os.environ, "dracutbasedir": str(base)} if base else None
    proc = subprocess.run(
        [
            "dracut",
            "--quiet",
            "--force",
            *options,
            "--kver",
            kver,
            "--kmoddir",
            str(moddir),
            "--conf",
            "/dev/null",
            "--confdir",
            str(conf),
            "--tmpdir",
            str(work),
            str(out),
        ],
        capture_output=True,
        text=True,
        env=env,
    )
    if proc.returncode != 0:
        sys.exit(f"dracut {' '.join(options)} failed:\n{proc.stderr}")


# --- boot time ------------------------------------------------------------------------------


@dataclass(frozen=True)
class BootTimes:
    """Kernel timestamps of one boot, in seconds since the kernel started."""

    init_run: float  # the kernel runs the initramfs's /init
    new_root_init: float  # the deployment's /sbin/init runs, after switch_root


def kernel_stamp(report: BootReport, pattern: re.Pattern[str], what: str) -> float:
    m = pattern.search(strip_terminal_codes(report.console))
    if m is None:
        tail = "\n".join(strip_terminal_codes(report.console).splitlines()[-40:])
        raise BootFailure(
            f"no timestamped line for {what} on the console (printk.time off?)\n"
            f"--- last lines of the console ---\n{tail}"
        )
    return float(m.group(1))


def time_boot(disk: Disk) -> BootTimes:
    # Disk.boot fails with the console's tail unless the test OS finished its report.
    report = disk.boot()
    return BootTimes(
        kernel_stamp(report, INIT_RUN, "the initramfs's /init"),
        kernel_stamp(report, NEW_ROOT_INIT, "the test OS's init"),
    )


def booted_initramfs_size(disk: Disk, work: Path) -> int:
    """Size of the initramfs on the image's ESP: what the boot loader really loads."""
    esp = work / "esp-copy"
    esp.mkdir()
    try:
        fatfs.copy_tree_out(disk.image, DiskLayout.read(disk.image).esp.offset, esp)
        initrds = list(esp.glob("bootkit/*/*/initrd"))
        if len(initrds) != 1:
            sys.exit(f"{disk.image}: expected one initrd on the ESP, found {len(initrds)}")
        return initrds[0].stat().st_size
    finally:
        shutil.rmtree(esp)


def boot_rows(
    kernel: KernelTree,
    initramfs: Sequence[tuple[str, Path | None]],
    bootloader: str,
    runs: int,
    work: Path,
) -> list[tuple[str, int, BootTimes]]:
    """Per image (None: bootkit builds it at deploy time): its size and median boot times."""
    rows = []
    for n, (name, image) in enumerate(initramfs):
        tree = build_testos(work / f"testos-{n}", kernel, "1")
        if image is not None:
            shutil.copyfile(image, tree / "usr/lib/modules" / kernel.version / "initramfs.img")
        # Disk's default sizes fit: its 128 MiB ESP holds the kernel and a dracut
        # image of ~40 MB, its 512 MiB disk the tree with that image inside.
        disk = Disk(work / f"disk-{n}.img", bootloader, work / f"boot-{n}")
        disk.create([tree])
        shutil.rmtree(tree)
        size = booted_initramfs_size(disk, work)
        times = [time_boot(disk) for _ in range(runs)]
        median = BootTimes(
            statistics.median(t.init_run for t in times),
            statistics.median(t.new_root_init for t in times),
        )
        rows.append((name, size, median))
        disk.image.unlink()
    return rows


BuildRow = tuple[str, float, tuple[int, int, str]]
BootRow = tuple[str, int, BootTimes]


def bootkit_build_rows(kver: str, modules: Path, runs: int, work: Path) -> list[BuildRow]:
    """bootkit's image per compression, in-process, and once more through the CLI."""
    rows: list[BuildRow] = []
    for method in ("gzip", "zstd", "xz"):
        out = work / f"bootkit-{method}.img"
        seconds = timed(
            functools.partial(build_initramfs, out, kver, modules, compress=method), runs
        )
        rows.append((f"bootkit ({method}, default modules)", seconds, describe(out)))
    # The same, as a user runs it: a fresh Python process and the CLI.
    out = work / "bootkit-cli.img"
    cli = [
        sys.executable,
        "-c",
        "from bootkit.cli import main; main()",
        "initramfs",
        "build",
        "--kver",
        kver,
        "--modules-dir",
        str(modules),
        "-o",
        str(out),
    ]
    seconds = timed(lambda: subprocess.run(cli, check=True, capture_output=True), runs)
    rows.append(("bootkit initramfs build (CLI, gzip)", seconds, describe(out)))
    return rows


def dracut_build_rows(
    kver: str, modules: Path, work: Path, boot_images: list[tuple[str, Path | None]] | None
) -> list[BuildRow]:
    """dracut's generic and host-only images; with `boot_images`, also the images to boot
    (DRACUT_BOOT_IMAGES), appended to it."""
    rows: list[BuildRow] = []
    moddir = depmod_copy(modules, kver, work)
    for option in ("--no-hostonly", "--hostonly"):
        out = work / f"dracut{option}.img"
        seconds = timed(functools.partial(dracut, kver, moddir, out, [option], work), 1)
        rows.append((f"dracut {option}", seconds, describe(out)))
    if boot_images is None:
        return rows
    base = dracut_base_with_bootkit(work / "dracut-base")
    for n, (name, options) in enumerate(DRACUT_BOOT_IMAGES):
        out = work / f"dracut-boot-{n}.img"
        seconds = timed(functools.partial(dracut, kver, moddir, out, options, work, base), 1)
        rows.append((name, seconds, describe(out)))
        boot_images.append((name, out))
    return rows


def boot_kernel(kernel_root: Path, no_boot: bool) -> tuple[KernelTree | None, str]:
    """The kernel to boot, or None and why the boot table is skipped."""
    if no_boot:
        return None, "--no-boot"
    if missing := missing_prerequisites():
        return None, f"missing {', '.join(missing)}"
    try:
        return find_kernel_tree(kernel_root), ""
    except KernelUnavailable as err:
        return None, str(err)


def print_build_table(kver: str, rows: Sequence[BuildRow]) -> None:
    width = max(len(name) for name, _, _ in rows)
    print(f"initramfs for kernel {kver} ({os.cpu_count()} CPUs)")
    print(f"{'image':<{width}} {'build s':>8} {'size MB':>8} {'files':>6}  compression")
    for name, seconds, (size, files, compression) in rows:
        print(f"{name:<{width}} {seconds:>8.2f} {size / 1e6:>8.2f} {files:>6}  {compression}")
    print(flush=True)


def print_boot_table(rows: Sequence[BootRow], bootloader: str, runs: int) -> None:
    width = max(len(name) for name, _, _ in rows)
    print(
        f"kernel start to switch_root, from kernel timestamps ({bootloader}, "
        f"accel {Machine(Path()).accel}, median of {runs} boot(s))"
    )
    columns = f"{'size MB':>8} {'kernel s':>9} {'initramfs s':>12} {'total s':>8}"
    print(f"{'initramfs':<{width}} {columns}")
    for name, size, t in rows:
        print(
            f"{name:<{width}} {size / 1e6:>8.2f} {t.init_run:>9.2f} "
            f"{t.new_root_init - t.init_run:>12.2f} {t.new_root_init:>8.2f}"
        )
    print("kernel: until the initramfs's /init runs; initramfs: /init until the deployment's init")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kernel-root", type=Path, default=configured_root())
    parser.add_argument("--runs", type=int, default=3, help="bootkit builds per row (median)")
    parser.add_argument("--no-dracut", action="store_true", help="skip the dracut rows (slow)")
    parser.add_argument("--no-boot", action="store_true", help="skip the boot time table (QEMU)")
    parser.add_argument("--boot-runs", type=int, default=1, help="boots per image (median)")
    parser.add_argument("--bootloader", choices=("systemd-boot", "grub"), default="systemd-boot")
    args = parser.parse_args()

    kver, modules = find_kernel(args.kernel_root)
    use_dracut = not args.no_dracut and shutil.which("dracut") is not None
    kernel, no_boot = boot_kernel(args.kernel_root, args.no_boot)
    boot_images: list[tuple[str, Path | None]] = [("bootkit (built at deploy)", None)]
    with tempfile.TemporaryDirectory(prefix="bootkit-bench-") as tmp:
        work = Path(tmp)
        rows = bootkit_build_rows(kver, modules, args.runs, work)
        if use_dracut:
            rows += dracut_build_rows(kver, modules, work, boot_images if kernel else None)
        print_build_table(kver, rows)
        if kernel is None:
            print(f"boot time table skipped: {no_boot}")
            return 0
        try:
            booted = boot_rows(kernel, boot_images, args.bootloader, args.boot_runs, work)
        except BootFailure as err:
            print(f"boot failed: {err}", file=sys.stderr)
            return 1
    print_boot_table(booted, args.bootloader, args.boot_runs)
    return 0


if __name__ == "__main__":
    sys.exit(main())
