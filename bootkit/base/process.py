"""Running the external programs bootkit relies on (mtools, e2fsprogs, grub-mkimage, ...)."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Mapping, Sequence

from bootkit.errors import BootkitError

# Which Debian package provides a tool, for the hint when it is missing.
PACKAGES = {
    "mformat": "mtools",
    "mcopy": "mtools",
    "mmd": "mtools",
    "mke2fs": "e2fsprogs",
    "debugfs": "e2fsprogs",
    "e2fsck": "e2fsprogs",
    "dumpe2fs": "e2fsprogs",
    "grub-mkimage": "grub-efi-amd64-bin (and grub-common)",
    "qemu-system-x86_64": "qemu-system-x86",
    "unshare": "util-linux",
}


def require_tool(name: str) -> str:
    path = shutil.which(name) or shutil.which(name, path="/usr/sbin:/sbin")
    if path is None:
        package = PACKAGES.get(name)
        raise BootkitError(
            f"{name} is not installed",
            hint=f"install the package {package}" if package else None,
        )
    return path


def run_tool(
    argv: Sequence[str],
    what: str,
    env: Mapping[str, str] | None = None,
    input: bytes | None = None,
) -> subprocess.CompletedProcess[bytes]:
    """Run `argv`; if it fails, raise a BootkitError saying `what` failed and why."""
    exe = require_tool(argv[0])
    proc = subprocess.run(
        [exe, *argv[1:]],
        input=input,
        # Never wait on a question (mtools asks before overwriting).
        stdin=subprocess.DEVNULL if input is None else None,
        capture_output=True,
        env=dict(env) if env is not None else None,
        check=False,
    )
    if proc.returncode != 0:
        detail = (proc.stderr or proc.stdout).decode(errors="replace").strip().splitlines()
        reason = detail[-1] if detail else f"exit status {proc.returncode}"
        raise BootkitError(f"{what} failed: {argv[0]}: {reason}")
    return proc
