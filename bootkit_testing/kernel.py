"""The distribution kernel the boot tests run: a Debian kernel package, unpacked once and cached.

`python -m bootkit_testing.kernel` (or `scripts/fetch-kernel`) downloads it if needed
and prints the directory holding it. The layout is what `dpkg -x` leaves:
`boot/vmlinuz-<kver>` and `lib/modules/<kver>/` (or `usr/lib/modules/<kver>/`).

Where it is looked for, in order: `$BOOTKIT_TEST_KERNEL_DIR` (used as is, never
written), then `<repo>/.cache/kernel/root`.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
ENV_VAR = "BOOTKIT_TEST_KERNEL_DIR"
CACHE = REPO / ".cache" / "kernel"
META_PACKAGE = "linux-image-amd64"


class KernelUnavailable(Exception):
    """No test kernel, and none could be fetched; the message says what to do."""


@dataclass(frozen=True)
class KernelTree:
    root: Path
    version: str
    vmlinuz: Path
    modules_dir: Path


def find_kernel(root: Path) -> KernelTree:
    """The kernel in an unpacked package tree (the newest, if there are several)."""
    images = sorted((root / "boot").glob("vmlinuz-*"))
    for vmlinuz in reversed(images):
        version = vmlinuz.name.removeprefix("vmlinuz-")
        for modules in (root / "lib/modules" / version, root / "usr/lib/modules" / version):
            if modules.is_dir():
                return KernelTree(root, version, vmlinuz, modules)
    raise KernelUnavailable(
        f"{root} holds no kernel: expected boot/vmlinuz-<kver> and lib/modules/<kver>/"
    )


def configured_root() -> Path:
    env = os.environ.get(ENV_VAR)
    return Path(env) if env else CACHE / "root"


def _run(argv: list[str], cwd: Path | None = None) -> str:
    try:
        proc = subprocess.run(argv, cwd=cwd, capture_output=True, text=True, check=False)
    except FileNotFoundError:
        raise KernelUnavailable(f"{argv[0]} is not installed (a Debian system is needed)") from None
    if proc.returncode != 0:
        detail = (proc.stderr or proc.stdout).strip().splitlines()
        raise KernelUnavailable(f"{' '.join(argv)} failed: {detail[-1] if detail else proc.returncode}")
    return proc.stdout


def kernel_package() -> str:
    """The versioned package that the meta package `linux-image-amd64` depends on."""
    out = _run(["apt-cache", "depends", "--no-recommends", "--no-suggests", META_PACKAGE])
    for line in out.splitlines():
        kind, _, name = line.strip().partition(":")
        name = name.strip()
        if kind in ("Depends", "|Depends") and name.startswith("linux-image-"):
            return name
    raise KernelUnavailable(f"{META_PACKAGE} depends on no linux-image package here")


def fetch_kernel(cache: Path = CACHE) -> Path:
    """Download and unpack the kernel package into `cache/root`; return that directory."""
    dest = cache / "root"
    cache.mkdir(parents=True, exist_ok=True)
    package = kernel_package()
    with tempfile.TemporaryDirectory(prefix="kernel-", dir=cache) as tmp:
        work = Path(tmp)
        _run(["apt-get", "download", package], cwd=work)
        debs = sorted(work.glob("*.deb"))
        if not debs:
            raise KernelUnavailable(f"apt-get download {package} left no .deb")
        unpacked = work / "root"
        _run(["dpkg-deb", "-x", str(debs[0]), str(unpacked)])
        find_kernel(unpacked)
        if dest.exists():
            shutil.rmtree(dest)
        os.rename(unpacked, dest)
    return dest


def ensure_kernel() -> KernelTree:
    """The configured kernel; fetched into the cache first when it is not there yet."""
    root = configured_root()
    if root.is_dir():
        return find_kernel(root)
    if os.environ.get(ENV_VAR):
        raise KernelUnavailable(f"{ENV_VAR}={root} does not exist")
    try:
        return find_kernel(fetch_kernel())
    except KernelUnavailable as err:
        raise KernelUnavailable(
            f"no test kernel in {root} and fetching one failed: {err}. "
            f"Run 'apt-get update' and retry, or set {ENV_VAR} to a directory holding "
            "a Debian linux-image package unpacked with dpkg -x"
        ) from None


def main() -> int:
    try:
        kernel = ensure_kernel()
    except KernelUnavailable as err:
        print(f"fetch-kernel: {err}", file=sys.stderr)
        return 1
    print(kernel.root)
    return 0


if __name__ == "__main__":
    sys.exit(main())
