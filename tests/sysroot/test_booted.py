"""Changing a read-only sysroot from inside a booted deployment (bootkit.sysroot.booted).

Each test runs a shell in a user and mount namespace of its own (`unshare -rm`),
where it bind-mounts a sysroot read-only onto itself as the initramfs hook does
for /sysroot, then runs bootkit code in a child process and checks from the
shell, after the child exited, that the mount is still read-only there.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from support.helpers import init_sysroot

REPO = Path(__file__).resolve().parents[2]

# $1: the sysroot, $2: the Python code to run, $3: the kernel command line the code
# sees (bound over /proc/cmdline); prints what the shell sees afterwards.
SHELL = """
set -e
mount --bind "$3" /proc/cmdline
mount --bind "$1" "$1"
mount -o remount,bind,ro "$1"
if touch "$1/before" 2>/dev/null; then echo "shell: writable before"; fi
status=0
"$PYTHON" -c "$2" "$1" || status=$?
echo "child exited $status"
if touch "$1/after" 2>/dev/null; then echo "shell: writable after"; else echo "shell: read-only after"; fi
"""


def _userns_works() -> bool:
    if shutil.which("unshare") is None:
        return False
    proc = subprocess.run(["unshare", "-rm", "true"], capture_output=True, check=False)
    return proc.returncode == 0


pytestmark = pytest.mark.skipif(not _userns_works(), reason="no user namespaces (unshare -rm)")


def in_namespace(sysroot: Path, code: str, cmdline: Path | None) -> str:
    env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "PYTHON": sys.executable,
           "PYTHONPATH": str(REPO)}
    if cmdline is None:
        cmdline = sysroot.parent / "cmdline-not-booted"
        cmdline.write_text("root=/dev/vda2 quiet\n")
    proc = subprocess.run(
        ["unshare", "-rm", "--propagation", "private", "sh", "-c", SHELL, "sh", str(sysroot),
         textwrap.dedent(code), str(cmdline)],
        capture_output=True, text=True, env=env, check=False, timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    return proc.stdout + proc.stderr


@pytest.fixture
def sysroot(tmp_path: Path) -> Path:
    root = tmp_path / "sysroot"
    root.mkdir()
    init_sysroot(root, "systemd-boot", "testos")
    (root / "efi" / "loader").mkdir()  # as if the ESP were mounted there
    return root


@pytest.fixture
def booted(tmp_path: Path) -> Path:
    cmdline = tmp_path / "cmdline"
    cmdline.write_text("root=LABEL=bootkit-root rw bootkit=/bootkit/deploy/testos/deploy/1-abc\n")
    return cmdline


def test_transaction_makes_sysroot_writable_for_itself_only(sysroot: Path, booted: Path) -> None:
    out = in_namespace(sysroot, """
        import sys
        from pathlib import Path
        from bootkit.sysroot.booted import BootedSysroot
        root = Path(sys.argv[1])
        with BootedSysroot(root).locked():
            (root / "bootkit" / "written").write_text("by bootkit")
        print("child: wrote")
    """, booted)
    assert "shell: writable before" not in out
    assert "child: wrote" in out and "child exited 0" in out, out
    assert "shell: read-only after" in out, out
    assert (sysroot / "bootkit" / "written").read_text() == "by bootkit"
    assert not (sysroot / "after").exists()


def test_reading_leaves_sysroot_read_only(sysroot: Path, booted: Path) -> None:
    out = in_namespace(sysroot, """
        import sys
        from pathlib import Path
        from bootkit.sysroot.booted import BootedSysroot, is_read_only
        from bootkit.sysroot.status import status
        root = Path(sys.argv[1])
        status(BootedSysroot(root)).rows
        print("child: read-only" if is_read_only(root) else "child: writable")
    """, booted)
    assert "child: read-only" in out, out


def test_outside_a_booted_deployment_nothing_is_remounted(sysroot: Path) -> None:
    out = in_namespace(sysroot, """
        import sys
        from pathlib import Path
        from bootkit.sysroot.booted import BootedSysroot
        try:
            with BootedSysroot(Path(sys.argv[1])).locked():
                print("child: locked")
        except OSError as err:
            print(f"child: {err.strerror}")
    """, None)
    assert "child: Read-only file system" in out, out


def test_boot_not_mounted_is_refused(sysroot: Path, booted: Path) -> None:
    (sysroot / "efi" / "loader").rmdir()
    out = in_namespace(sysroot, """
        import sys
        from pathlib import Path
        from bootkit.sysroot.booted import BootedSysroot
        from bootkit.errors import BootkitError
        try:
            with BootedSysroot(Path(sys.argv[1])).locked():
                print("child: locked")
        except BootkitError as err:
            print(f"child: {err.message}")
    """, booted)
    assert f"child: $BOOT is not mounted at {sysroot}/efi" in out, out
