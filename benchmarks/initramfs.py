"""Build time and size of bootkit's initramfs against dracut's, for the same Debian kernel.

    .venv/bin/python benchmarks/initramfs.py [--kernel-root DIR] [--runs N] [--no-dracut]

The kernel root is a dpkg -x'ed kernel package (boot/vmlinuz-<kver>,
lib/modules/<kver>/), by default $BOOTKIT_TEST_KERNEL_DIR or .cache/kernel/root.
dracut needs modules.dep, which an unpacked package lacks, so it gets a
hard-linked copy of the modules with depmod run on it (not timed).
Prints one table; the target for bootkit's default image is < 1 s and < 5 MB.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bootkit.initramfs import build_initramfs, read_image  # noqa: E402
from bootkit.initramfs.reader import members  # noqa: E402


def default_kernel_root() -> Path:
    env = os.environ.get("BOOTKIT_TEST_KERNEL_DIR")
    return Path(env) if env else REPO / ".cache/kernel/root"


def find_kernel(root: Path) -> tuple[str, Path]:
    for modules in sorted((root / "lib/modules").glob("*")) + sorted(
        (root / "usr/lib/modules").glob("*")
    ):
        if (modules / "kernel").is_dir():
            return modules.name, modules
    sys.exit(f"no lib/modules/<kver>/kernel under {root}; pass --kernel-root")


def timed(build: Callable[[], None], runs: int) -> float:
    times = []
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


def dracut(kver: str, moddir: Path, out: Path, hostonly: bool, work: Path) -> None:
    conf = work / "dracut.conf.d"
    conf.mkdir(exist_ok=True)
    proc = subprocess.run(
        [
            "dracut",
            "--quiet",
            "--force",
            "--hostonly" if hostonly else "--no-hostonly",
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
    )
    if proc.returncode != 0:
        sys.exit(f"dracut failed:\n{proc.stderr}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kernel-root", type=Path, default=default_kernel_root())
    parser.add_argument("--runs", type=int, default=3, help="bootkit builds per row (median)")
    parser.add_argument("--no-dracut", action="store_true", help="skip the dracut rows (slow)")
    args = parser.parse_args()

    kver, modules = find_kernel(args.kernel_root)
    rows: list[tuple[str, float, tuple[int, int, str]]] = []
    with tempfile.TemporaryDirectory(prefix="bootkit-bench-") as tmp:
        work = Path(tmp)
        for method in ("gzip", "zstd", "xz"):
            out = work / f"bootkit-{method}.img"
            seconds = timed(
                lambda out=out, m=method: build_initramfs(out, kver, modules, compress=m), args.runs
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
        seconds = timed(lambda: subprocess.run(cli, check=True, capture_output=True), args.runs)
        rows.append(("bootkit initramfs build (CLI, gzip)", seconds, describe(out)))
        if not args.no_dracut and shutil.which("dracut"):
            moddir = depmod_copy(modules, kver, work)
            for hostonly in (False, True):
                out = work / f"dracut-{hostonly}.img"
                seconds = timed(lambda o=out, h=hostonly: dracut(kver, moddir, o, h, work), 1)
                name = "dracut --hostonly" if hostonly else "dracut --no-hostonly"
                rows.append((name, seconds, describe(out)))

    print(f"initramfs for kernel {kver} ({os.cpu_count()} CPUs)")
    print(f"{'image':<36} {'build s':>8} {'size MB':>8} {'files':>6}  compression")
    for name, seconds, (size, files, compression) in rows:
        print(f"{name:<36} {seconds:>8.2f} {size / 1e6:>8.2f} {files:>6}  {compression}")


if __name__ == "__main__":
    main()
