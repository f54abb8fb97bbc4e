"""A system error that reaches a command becomes one `bootkit:` line and a hint, never a traceback.

The full disk and the read-only filesystem are real: a 1 MiB tmpfs and a read-only
bind mount, each in a user and mount namespace of the test's own.
"""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from support.helpers import make_tree, python_cli

from bootkit.errors import from_os_error

# $1: the sysroot directory, $2: how to mount over it ("tmpfs" or "ro"), then the
# bootkit command line. /proc/cmdline is replaced so no host's bootkit= leaks in.
SHELL = """
set -e
sysroot=$1; how=$2; shift 2
printf 'root=/dev/vda2\\n' > "$sysroot.cmdline"
mount --bind "$sysroot.cmdline" /proc/cmdline
case $how in
    tmpfs) mount -t tmpfs -o size=1m none "$sysroot" ;;
    ro) mount --bind "$sysroot" "$sysroot"; mount -o remount,bind,ro "$sysroot" ;;
esac
"""


def _userns_works() -> bool:
    if shutil.which("unshare") is None:
        return False
    proc = subprocess.run(["unshare", "-rm", "true"], capture_output=True, check=False)
    return proc.returncode == 0


needs_userns = pytest.mark.skipif(not _userns_works(), reason="no user namespaces (unshare -rm)")


def run_mounted(sysroot: Path, how: str, script: str) -> subprocess.CompletedProcess[str]:
    """Run the shell `script` (bootkit is "$@") with `sysroot` mounted as `how`."""
    return subprocess.run(
        ["unshare", "-rm", "--propagation", "private", "sh", "-c",
         SHELL + script, "sh", str(sysroot), how, *python_cli()],
        capture_output=True, text=True, check=False, timeout=120,
        env={**os.environ, "BOOTKIT_NO_PROGRESS": "1"},
    )


def assert_one_line_with_hint(proc: subprocess.CompletedProcess[str], start: str) -> None:
    assert proc.returncode == 1, (proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert lines[-2].startswith(f"bootkit: {start}"), proc.stderr
    assert lines[-1].startswith("bootkit: hint: "), proc.stderr


@needs_userns
def test_full_root_filesystem(tmp_path: Path) -> None:
    tree = make_tree(tmp_path / "tree", files={"usr/lib/big": os.urandom(2 << 20)})
    sysroot = tmp_path / "sysroot"
    sysroot.mkdir()
    proc = run_mounted(sysroot, "tmpfs", f"""
"$@" init --sysroot "$sysroot" --os test --bootloader systemd-boot
"$@" deploy --sysroot "$sysroot" {tree}
""")
    # The import sees that the file cannot fit before it writes a byte of it.
    assert_one_line_with_hint(proc, "usr/lib/big is 2.0 MiB, but the sysroot has ")
    assert "bootkit cleanup" in proc.stderr.splitlines()[-1]


@needs_userns
def test_read_only_sysroot(tmp_path: Path) -> None:
    sysroot = tmp_path / "sysroot"
    sysroot.mkdir()
    proc = run_mounted(sysroot, "ro", '"$@" init --sysroot "$sysroot" --os test --bootloader grub')
    assert_one_line_with_hint(proc, "the filesystem is mounted read-only: ")
    assert "read-write" in proc.stderr


def test_name_too_long(tmp_path: Path) -> None:
    sysroot = tmp_path / "sysroot"
    sysroot.mkdir()
    proc = subprocess.run(
        [*python_cli(), "deploy", "--sysroot", str(sysroot), str(tmp_path / ("a" * 300))],
        capture_output=True, text=True, check=False,
    )
    assert_one_line_with_hint(proc, "a file name is too long: ")


@pytest.mark.parametrize(
    ("code", "start", "hint"),
    [
        (errno.EACCES, "permission denied: /x", "run bootkit as root"),
        (errno.EIO, "input/output error: /x", "dmesg"),
        (errno.EXDEV, os.strerror(errno.EXDEV) + ": /x", "run the command again"),
    ],
)
def test_every_error_gets_a_hint(code: int, start: str, hint: str) -> None:
    err = from_os_error(OSError(code, os.strerror(code), "/x"))
    assert err.message == start
    assert err.hint is not None and hint in err.hint


def test_two_paths_are_both_named() -> None:
    err = from_os_error(OSError(errno.ENOSPC, "No space left on device", "/a", None, "/b"))
    assert err.message == "no space left on the filesystem: /a -> /b"


def test_a_bug_keeps_its_traceback(monkeypatch: pytest.MonkeyPatch) -> None:
    probe = (
        "import sys\n"
        "from bootkit.cli import main\n"
        "from bootkit.cli import status\n"
        "def broken(*a, **k):\n"
        "    raise ZeroDivisionError('a bug')\n"
        "status.open_sysroot = broken\n"
        "main(['status'])\n"
    )
    proc = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=False)
    assert proc.returncode != 0 and "Traceback" in proc.stderr and "ZeroDivisionError" in proc.stderr
