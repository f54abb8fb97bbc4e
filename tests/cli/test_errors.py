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
from support.helpers import init_sysroot, make_tree, python_cli

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
    tmpfs-4m) mount -t tmpfs -o size=4m none "$sysroot" ;;
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
    sysroot = init_sysroot(tmp_path / "sysroot").path
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


# A deploy killed (as by a power cut) once its tree has its final name and it is
# recorded as in flight, before the state lists it: $1 the sysroot, $2 the tree.
_KILLED_DEPLOY = """
import os, sys
from bootkit.sysroot import transaction
def killed(*args, **kwargs):
    os._exit(9)
transaction.commit = killed
from bootkit.cli import main
main(["deploy", "--sysroot", sys.argv[1], sys.argv[2]])
"""


def _fill(sysroot: Path) -> str:
    """Shell that fills the filesystem at `sysroot` up to the last block."""
    return f'cat /dev/zero > "{sysroot}/filler" 2>/dev/null || true\n'


@needs_userns
def test_a_full_disk_gets_the_room_of_what_an_interrupted_deploy_left(tmp_path: Path) -> None:
    """The next command frees what the interrupted deploy left before it writes anything."""
    small = make_tree(tmp_path / "small")
    big = make_tree(tmp_path / "big", version="2", files={"usr/lib/big": os.urandom(3 << 19)})
    sysroot = tmp_path / "sysroot"
    sysroot.mkdir()
    script = tmp_path / "killed.py"
    script.write_text(_KILLED_DEPLOY)
    proc = run_mounted(sysroot, "tmpfs-4m", f"""
"$@" init --sysroot "$sysroot" --os test --bootloader systemd-boot
"$@" deploy --sysroot "$sysroot" {small}
{sys.executable} {script} "$sysroot" {big} || echo "deploy killed: $?"
ls "$sysroot/bootkit/deploy/test/deploy" | grep -c json
{_fill(sysroot)}
"$@" bootloader update --sysroot "$sysroot"
rm "$sysroot/filler"
ls -a "$sysroot/bootkit/deploy/test/deploy"
""")
    assert proc.returncode == 0, proc.stderr
    assert "deploy killed: 9" in proc.stdout
    assert "\n2\n" in proc.stdout  # the killed deploy's metadata was there
    # The menu is what $BOOT holds already: it stays generation 1, and the state is
    # written again, in the room the leftovers made.
    assert "Bootloader updated; generation 1; 1 entries" in proc.stdout
    listed = proc.stdout.split("entries\n")[1].split()
    assert [n for n in listed if n not in (".", "..")] == [n for n in listed if n.startswith("1-")]


@needs_userns
def test_a_full_disk_fails_cleanly_when_nothing_can_be_freed(tmp_path: Path) -> None:
    tree = make_tree(tmp_path / "tree")
    sysroot = tmp_path / "sysroot"
    sysroot.mkdir()
    proc = run_mounted(sysroot, "tmpfs-4m", f"""
"$@" init --sysroot "$sysroot" --os test --bootloader systemd-boot
"$@" deploy --sysroot "$sysroot" {tree}
{_fill(sysroot)}
"$@" bootloader update --sysroot "$sysroot" || {{
    echo "exit $?"; ls -a "$sysroot/bootkit"; cat "$sysroot/bootkit/state.json"; exit 1
}}
""")
    assert "exit 1" in proc.stdout, (proc.stdout, proc.stderr)
    assert_one_line_with_hint(proc, "no space left on the filesystem: ")
    # The state is whole, and no temp file is left.
    assert '"generation": 1' in proc.stdout and ".bootkit-tmp" not in proc.stdout
