"""A read-only $BOOT in a booted deployment (bootkit.sysroot.booted.writable_boot).

Each test runs in a mount namespace of its own: there $BOOT is a real filesystem
mounted read-only at the sysroot's efi/ (tmpfs in a user namespace; ext4 and vfat
on a loop device when the tests run as root), the sysroot is bind-mounted
read-only onto itself as the initramfs hook does for /sysroot, and the kernel
command line names a deployment. A Python script there runs bootkit commands as
processes of their own and reports, as JSON, what the namespace saw: the role of
the host, whose mount must stay read-only throughout.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from support.helpers import REPO, make_tree, ok

from bootkit.errors import BootkitError
from bootkit.sysroot import booted
from bootkit.sysroot.layout import Sysroot

# $1: the sysroot, $2: the Python script, $3: the kernel command line, $4: how
# $BOOT is mounted (a word below). The work directory is the sysroot's parent.
SHELL = """
set -e
root=$1 boot=$1/efi work=$(dirname "$1")
mount --bind "$3" /proc/cmdline
mount --bind "$root" "$root"
mount -o remount,bind,ro "$root"
case $4 in
tmpfs)
    cp -a "$boot" "$work/boot-content"  # the tmpfs hides what is there
    mount -t tmpfs -o size=16m,mode=0755,nosuid,nodev,noexec,sync,lazytime bootfs "$boot"
    cp -a "$work/boot-content/." "$boot/"
    mount -o remount,ro "$boot" ;;
tmpfs-bind)  # a writable filesystem whose mount at $BOOT alone is read-only
    mkdir "$work/rw"
    mount -t tmpfs -o size=16m,mode=0755 bootfs "$work/rw"
    cp -a "$boot/." "$work/rw/"
    mount --bind "$work/rw" "$boot"
    mount -o remount,bind,ro "$boot" ;;
ext4)
    mkfs.ext4 -q -d "$boot" "$work/boot.img" 32M
    dev=$(losetup -f --show "$work/boot.img")
    mount -t ext4 -o ro,nosuid,nodev,noexec,sync,lazytime "$dev" "$boot"
    losetup -d "$dev" ;;  # detached once unmounted, with the namespace
vfat)
    mkfs.vfat -C "$work/boot.img" 32768 >/dev/null
    (cd "$boot" && mcopy -s -i "$work/boot.img" ./* ::/)
    dev=$(losetup -f --show "$work/boot.img")
    mount -t vfat -o ro,umask=0077,shortname=winnt,nosuid,nodev "$dev" "$boot"
    losetup -d "$dev" ;;
unmounted) ;;  # $BOOT is the empty directory on the read-only sysroot
esac
exec "$PYTHON" -c "$2" "$root"
"""

# Runs in the namespace; its functions are available to each test's own code.
PRELUDE = """
import json, os, subprocess, sys
from pathlib import Path
root = Path(sys.argv[1])
boot = root / "efi"
report = {}

def mount_line(path):
    # The topmost mount at `path`: its own options and its filesystem's.
    lines = [l.split() for l in open("/proc/self/mountinfo")]
    fields = [f for f in lines if f[4] == str(path)][-1]
    return {"mount": fields[5].split(","), "super": fields[-1].split(",")}

def write_refused(path):
    try:
        path.write_text("not bootkit")
    except OSError as err:
        return err.strerror
    return None

def bootkit(*args):
    cmd = [sys.executable, "-c", "import sys; from bootkit.cli import main; sys.exit(main())"]
    proc = subprocess.run([*cmd, *args, "--sysroot", str(root)], capture_output=True, text=True)
    return {"rc": proc.returncode, "out": proc.stdout + proc.stderr}

def entries():
    return sorted(os.listdir(boot / "loader/entries"))
"""


def _can(*command: str) -> bool:
    if shutil.which(command[0]) is None:
        return False
    return subprocess.run(list(command), capture_output=True, check=False).returncode == 0


def _filesystem_available(fstype: str) -> bool:
    if fstype in Path("/proc/filesystems").read_text().split():
        return True
    return _can("modprobe", "-q", fstype)


def _mounting(kind: str) -> list[str]:
    """How to get a mount namespace where `kind` can be mounted, or skip."""
    if kind.startswith("tmpfs") or kind == "unmounted":
        if not _can("unshare", "-rm", "true"):
            pytest.skip("no user namespaces (unshare -rm)")
        return ["unshare", "-rm", "--propagation", "private"]
    tools = {"ext4": "mkfs.ext4", "vfat": "mcopy"}[kind]
    if os.geteuid() != 0 or shutil.which("losetup") is None or shutil.which(tools) is None:
        pytest.skip(f"mounting {kind} on a loop device needs root, losetup and {tools}")
    if not _filesystem_available(kind):
        pytest.skip(f"this kernel has no {kind}")
    return ["unshare", "-m", "--propagation", "private"]


def in_namespace(sysroot: Path, kind: str, code: str) -> dict:
    """Run `code` (after PRELUDE) where $BOOT is mounted read-only as `kind`; its report."""
    cmdline = sysroot.parent / "cmdline"
    cmdline.write_text("root=LABEL=root rw bootkit=" + json.loads(
        (sysroot.parent / "booted.json").read_text())["path"] + "\n")
    env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "PYTHON": sys.executable,
           "PYTHONPATH": str(REPO)}
    script = PRELUDE + textwrap.dedent(code) + "\nprint(json.dumps(report))\n"
    proc = subprocess.run(
        [*_mounting(kind), "sh", "-c", SHELL, "sh", str(sysroot), script, str(cmdline), kind],
        capture_output=True, text=True, env=env, check=False, timeout=120,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return dict(json.loads(proc.stdout.splitlines()[-1]))


@pytest.fixture
def sysroot(tmp_path: Path) -> Path:
    """Two deployments, the second (the default) booted; their entries count tries."""
    root = tmp_path / "sysroot"
    root.mkdir()
    ok("init", "--sysroot", root, "--os", "testos", "--bootloader", "systemd-boot")
    for n in (1, 2):
        tree = make_tree(tmp_path / f"tree{n}", version=str(n))
        out = ok("deploy", "--sysroot", root, tree, "--json").stdout
        (tmp_path / "booted.json").write_text(out)
    return root


CHANGES = """
report["before"] = mount_line(boot)
report["mark_good"] = bootkit("mark-good")
report["marked"] = entries()
report["set_default"] = bootkit("set-default", "1")
report["status"] = json.loads(bootkit("status", "--json")["out"])
report["after"] = mount_line(boot)
report["outside"] = write_refused(boot / "outside")
report["outside_exists"] = (boot / "outside").exists()
"""


@pytest.mark.parametrize("kind", ["tmpfs", "ext4", "vfat"])
def test_changes_reach_a_read_only_boot_and_leave_it_read_only(sysroot: Path, kind: str) -> None:
    report = in_namespace(sysroot, kind, CHANGES)
    assert "ro" in report["before"]["mount"] and "ro" in report["before"]["super"], report
    if kind != "vfat":  # options a remount of the filesystem would clear unless given
        assert {"sync", "lazytime"} <= set(report["before"]["super"]), report
    assert report["mark_good"]["rc"] == 0, report["mark_good"]
    booted_id = json.loads((sysroot.parent / "booted.json").read_text())["id"]
    assert [e for e in report["marked"] if booted_id in e and "+" not in e], report["marked"]
    assert report["set_default"]["rc"] == 0, report["set_default"]
    assert report["status"]["deployments"][0]["id"].startswith("1-"), report["status"]
    # The namespace's own mount, and the filesystem itself, are read-only again;
    # the filesystem's options are those it was mounted with.
    assert report["after"] == report["before"], report
    assert report["outside"] == "Read-only file system"
    assert not report["outside_exists"]


def test_the_mount_outside_stays_read_only_while_bootkit_writes(sysroot: Path) -> None:
    report = in_namespace(sysroot, "tmpfs", """
        from bootkit.sysroot.booted import BootedSysroot, writable_boot
        # A process that stays in the namespace this one starts in: the host's view.
        host = subprocess.Popen(["sleep", "600"], stdout=subprocess.DEVNULL)
        host_boot = Path(f"/proc/{host.pid}/root") / str(boot).lstrip("/")
        report["before"] = mount_line(boot)
        try:
            with writable_boot(BootedSysroot(root)):
                (boot / "written").write_text("by bootkit")
                report["inside"] = mount_line(boot)
                report["during"] = write_refused(host_boot / "x")
                report["host_sees"] = (host_boot / "written").read_text()
        finally:
            host.kill()
        report["after"] = mount_line(boot)
        report["kept"] = (boot / "written").read_text()
    """)
    assert "rw" in report["inside"]["mount"] and "rw" in report["inside"]["super"], report
    kept = set(report["before"]["mount"]) - {"ro"}
    assert kept >= {"nosuid", "nodev", "noexec"} and kept <= set(report["inside"]["mount"]), report
    assert report["during"] == "Read-only file system", report
    assert report["host_sees"] == "by bootkit"  # one filesystem, two mounts of it
    assert "ro" in report["after"]["super"], report
    assert report["kept"] == "by bootkit"


def test_the_last_bootkit_process_writing_boot_sets_it_read_only(sysroot: Path) -> None:
    report = in_namespace(sysroot, "tmpfs", """
        import fcntl, time
        # This process stands for another bootkit command writing $BOOT meanwhile.
        fd = os.open(boot, os.O_RDONLY)
        fcntl.flock(fd, fcntl.LOCK_SH)
        cmd = [sys.executable, "-c", "import sys; from bootkit.cli import main; sys.exit(main())"]
        proc = subprocess.Popen([*cmd, "mark-good", "--sysroot", str(root)])
        # mark-good is done writing once it waits for the exclusive lock (/proc/locks: "->").
        deadline = time.monotonic() + 60
        while not any(l.split()[1] == "->" and str(proc.pid) in l.split() for l in open("/proc/locks")):
            assert proc.poll() is None and time.monotonic() < deadline, "mark-good did not wait"
            time.sleep(0.05)
        report["waiting"] = mount_line(boot)
        report["marked"] = entries()
        os.close(fd)
        report["rc"] = proc.wait()
        report["after"] = mount_line(boot)
    """)
    assert "rw" in report["waiting"]["super"], report  # not read-only under the other's feet
    assert [e for e in report["marked"] if "+" not in e], report
    assert report["rc"] == 0
    assert "ro" in report["after"]["super"], report


def test_a_writable_filesystem_behind_a_read_only_mount_stays_writable(sysroot: Path) -> None:
    report = in_namespace(sysroot, "tmpfs-bind", """
        report["mark_good"] = bootkit("mark-good")
        report["after"] = mount_line(boot)
        report["rw_mount"] = write_refused(root.parent / "rw" / "still-writable")
    """)
    assert report["mark_good"]["rc"] == 0, report["mark_good"]
    assert "ro" in report["after"]["mount"] and "rw" in report["after"]["super"], report
    assert report["rw_mount"] is None, report


def test_mark_good_without_cap_sys_admin_says_so(sysroot: Path) -> None:
    if shutil.which("setpriv") is None:
        pytest.skip("setpriv is not installed")
    report = in_namespace(sysroot, "tmpfs", """
        cmd = ["setpriv", "--bounding-set", "-sys_admin", "--inh-caps", "-sys_admin",
               sys.executable, "-c", "import sys; from bootkit.cli import main; sys.exit(main())"]
        proc = subprocess.run([*cmd, "mark-good", "--sysroot", str(root)],
                              capture_output=True, text=True)
        report["rc"], report["err"] = proc.returncode, proc.stderr
        report["entries"] = entries()
    """)
    assert report["rc"] == 1, report
    assert "cannot make $BOOT" in report["err"] and "CAP_SYS_ADMIN" in report["err"], report
    assert all("+3" in e for e in report["entries"]), report


def test_boot_not_mounted_is_said_so(sysroot: Path) -> None:
    (sysroot / "efi").rename(sysroot / "efi-elsewhere")
    (sysroot / "efi").mkdir()
    report = in_namespace(sysroot, "unmounted", """
        report["mark_good"] = bootkit("mark-good")
        report["set_default"] = bootkit("set-default", "1")
    """)
    efi = sysroot / "efi"
    assert report["mark_good"]["rc"] == 1, report
    assert f"no boot configuration at {efi}: is $BOOT mounted there?" in report["mark_good"]["out"]
    assert report["set_default"]["rc"] == 1, report
    assert f"$BOOT is not mounted at {efi}" in report["set_default"]["out"]
    assert not list(efi.iterdir())


def test_not_root_is_told_to_run_as_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = tmp_path / "sysroot"
    root.mkdir()
    ok("init", "--sysroot", root, "--os", "testos", "--bootloader", "systemd-boot")
    (root / "efi").mkdir(exist_ok=True)
    monkeypatch.setattr(booted, "booted_deployment", lambda: "/bootkit/deploy/testos/deploy/1-a")
    monkeypatch.setattr(booted, "is_read_only", lambda path: True)
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    with pytest.raises(BootkitError) as err, booted.writable_boot(Sysroot(root)):
        pass
    assert err.value.message == f"{root}/efi is mounted read-only"
    assert "run bootkit as root" in (err.value.hint or "")
