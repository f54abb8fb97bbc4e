"""The bootkit demo: make a disk image with two deployments, boot it, update, roll back.

Run it as `scripts/demo` (after `scripts/setup`). Everything happens in a
temporary directory (or --workdir) with the test OS from bootkit_testing/testos.py;
each boot runs UEFI firmware and a real bootloader under QEMU, about 20 s each.
"""

from __future__ import annotations

import argparse
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from .harness import MENU_TIMEOUT, TEST_KARGS, BootReport, Disk, bootkit_command, menu_titles
from .kernel import KernelTree, KernelUnavailable, ensure_kernel
from .qemu import missing_prerequisites
from .testos import build_testos

VAR = "/bootkit/deploy/testos/var"


def heading(text: str) -> None:
    print(f"\n== {text} ==", flush=True)


def note(text: str) -> None:
    print(f"   {text}", flush=True)


def run_bootkit(*args: str | Path, cwd: Path) -> str:
    """Run a bootkit command the way a user would, showing it and its output."""
    shown = ["bootkit", *(a.name if isinstance(a, Path) and a.parent == cwd else str(a) for a in args)]
    print(f"$ {shlex.join(shown)}", flush=True)
    proc = subprocess.run([*bootkit_command(), *map(str, args)], stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True, check=False)
    for line in proc.stdout.splitlines():
        print(f"  {line}")
    if proc.returncode != 0:
        raise SystemExit(f"demo: the command failed (status {proc.returncode})")
    return proc.stdout


def show_boot(report: BootReport, titles: list[str]) -> None:
    note(f"boot menu (top = default): {' | '.join(menu_titles(report.console, titles))}")
    note(f"came up: Bootkit Test OS {report.id}, kernel argument bootkit={report.bootkit_arg}")
    note("mounts in the guest (what is mounted where, from /proc/self/mountinfo):")
    explain = {
        "/": "the deployment's own tree",
        "/usr": "read-only: the OS cannot be changed by accident",
        "/var": "shared by every deployment, survives updates and rollbacks",
        "/sysroot": "the whole physical root, read-only",
    }
    for path, why in explain.items():
        mount = report.mount(path)
        if mount is None:
            note(f"  {path:<9} (not a mount point)")
            continue
        mode = "ro" if mount.read_only else "rw"
        note(f"  {path:<9} {mode}  <- {mount.root}")
        note(f"  {'':<9}     {why}")
    verdict = {True: "works", False: "refused", None: "?"}
    note("writing a file: " + ", ".join(
        f"{p} {verdict[report.writable(p)]}" for p in ("/usr", "/etc", "/var")))
    note(f"/var/lib/bootkit-test/history written by earlier boots: {report.history('var') or '(empty)'}")
    note(f"boot took {report.seconds:.0f} s")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="scripts/demo", description=__doc__)
    parser.add_argument("--bootloader", choices=("systemd-boot", "grub"), default="systemd-boot")
    parser.add_argument("--workdir", type=Path,
                        help="keep the image, trees and console logs here (default: a temp dir)")
    args = parser.parse_args(argv)
    missing = missing_prerequisites()
    if missing:
        print(f"demo: missing {', '.join(missing)}; run scripts/setup", file=sys.stderr)
        return 1
    try:
        kernel = ensure_kernel()
    except KernelUnavailable as err:
        print(f"demo: {err}", file=sys.stderr)
        return 1
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="bootkit-demo-") as tmp:
        work = args.workdir or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        return _demo(work, kernel, args.bootloader, started, keep=args.workdir is not None)


def _demo(work: Path, kernel: KernelTree, bootloader: str, started: float, keep: bool) -> int:
    trees = {}
    for version in ("1", "2", "3"):
        tree = work / f"testos-{version}"
        if not tree.exists():
            build_testos(tree, kernel, version)
        trees[version] = tree
    titles = [f"Bootkit Test OS {v}" for v in trees]
    image = work / "demo.img"
    disk = Disk(image, bootloader, work)

    heading("1. A disk image with two deployments of a small test OS (busybox + Debian kernel)")
    note("Each tree has its kernel in usr/lib/modules/<kver>/; bootkit builds the initramfs.")
    run_bootkit("image", "create", image, trees["1"], trees["2"], "--size", "512M",
                "--esp-size", "128M", "--bootloader", bootloader, "--timeout", str(MENU_TIMEOUT),
                "--force", *(f"--karg={k}" for k in TEST_KARGS), cwd=work)
    note("The boot menu, as 'bootkit status' lists it (the last deployed is the default):")
    run_bootkit("image", "status", image, cwd=work)

    heading(f"2. Boot it: UEFI firmware (OVMF) -> {bootloader} -> kernel -> bootkit initramfs")
    show_boot(disk.boot(), titles)

    heading("3. Update: deploy version 3 and boot it")
    run_bootkit("image", "deploy", image, trees["3"], cwd=work)
    report = disk.boot()
    show_boot(report, titles)
    note("/var kept what the previous boot wrote: the update did not touch it.")

    heading("4. Something is wrong with version 3? Roll back")
    run_bootkit("image", "rollback", image, cwd=work)
    run_bootkit("image", "status", image, cwd=work)
    show_boot(disk.boot(), titles)

    heading("Done")
    note(f"{len(disk.boots)} boots, {time.monotonic() - started:.0f} s in all")
    if keep:
        note(f"image: {image}; console logs: {work}/*.console.log")
    else:
        note("run with --workdir DIR to keep the image and the console logs")
    return 0


if __name__ == "__main__":
    sys.exit(main())
