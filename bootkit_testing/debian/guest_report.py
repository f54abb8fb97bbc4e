#!/usr/bin/python3
"""Report what a person would check on the booted system, do this boot's step, power off.

Runs in the Debian guest as /usr/lib/bootkit-test/report (bootkit-test-report.service),
with the guest's own python3 and nothing but the standard library.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path
from typing import Any

MARKER = "BOOTKIT-TEST"
# What the host passes in and attaches; bootkit_testing.debian reads these too.
STEP_FW_CFG = "opt/bootkit-test/step"
UPDATE_LABEL = "bootkit-update"
UPDATE_TAR = "tree.tar"

STEP = Path(f"/sys/firmware/qemu_fw_cfg/by_name/{STEP_FW_CFG}/raw")
UPDATE_DEVICE = Path(f"/dev/disk/by-label/{UPDATE_LABEL}")
UPDATE_MOUNT = Path("/run/bootkit-update")
TEST_DIR = "bootkit-test"
# What marks a counted boot good once boot-complete.target is reached.
MARK_GOOD_UNITS = ("systemd-bless-boot.service", "bootkit-mark-good.service")


def say(key: str, value: str = "") -> None:
    # One write per line, so other console output cannot split it.
    os.write(1, f"{MARKER} {key}={value}\n".encode())


def run(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, check=False)


def one_line(text: str) -> str:
    return " | ".join(line.strip() for line in text.strip().splitlines())


def read(path: str | Path) -> str:
    try:
        return Path(path).read_text().strip()
    except OSError:
        return ""


def os_release() -> dict[str, str]:
    values: dict[str, str] = {}
    for line in read("/etc/os-release").splitlines():
        key, _, value = line.partition("=")
        values[key] = value.strip('"')
    return values


def bootkit(*args: str) -> str:
    proc = run("bootkit", *args)
    if proc.returncode != 0:
        raise RuntimeError(f"bootkit {' '.join(args)}: {one_line(proc.stderr + proc.stdout)}")
    return proc.stdout


def status() -> Any:
    return json.loads(bootkit("status", "--json"))


def boot_times() -> str:
    """Seconds in the kernel, in the initramfs, and from there to multi-user.target."""
    props = run("systemctl", "show", "--property=InitRDTimestampMonotonic",
                "--property=UserspaceTimestampMonotonic").stdout
    t = {k: int(v or 0) for k, _, v in (line.partition("=") for line in props.splitlines())}
    target = run("systemctl", "show", "--property=ActiveEnterTimestampMonotonic",
                 "--value", "multi-user.target").stdout.strip()
    initrd, userspace = t.get("InitRDTimestampMonotonic", 0), t.get("UserspaceTimestampMonotonic", 0)
    parts = {"kernel": initrd, "initrd": userspace - initrd, "userspace": int(target or 0) - userspace}
    return " ".join(f"{k}={v / 1e6:.1f}" for k, v in parts.items())


def writable(path: str | Path) -> bool:
    probe = Path(path) / ".bootkit-test-probe"
    try:
        probe.write_text("probe\n")
        probe.unlink()
        return True
    except OSError:
        return False


def report() -> Any:
    rel = os_release()
    say("version", rel.get("VERSION_ID", ""))
    say("pretty-name", rel.get("PRETTY_NAME", ""))
    for arg in read("/proc/cmdline").split():
        if arg.startswith("bootkit="):
            say("bootkit", arg.partition("=")[2])
    for path in ("/", "/usr", "/etc", "/var", "/sysroot", "/sysroot/efi"):
        proc = run("findmnt", "--noheadings", "--raw", "--nofsroot",
                   "--output", "FSROOT,VFS-OPTIONS,SOURCE",
                   "--target", path)
        fields = proc.stdout.split()
        if len(fields) == 3:
            say(f"mount:{path}", f"root={fields[0]} options={fields[1]}")
            say(f"source:{path}", fields[2])
    for path in ("/usr", "/etc", "/var", "/sysroot"):
        say(f"write:{path}", "yes" if writable(path) else "no")
    say("multi-user", run("systemctl", "is-active", "multi-user.target").stdout.strip())
    # Where boot counting will look: boot-complete.target marks a boot good.
    say("boot-complete", run("systemctl", "is-active", "boot-complete.target").stdout.strip())
    for unit in MARK_GOOD_UNITS:
        say(f"unit:{unit}", run("systemctl", "is-active", unit).stdout.strip())
        log = run("journalctl", "--boot", "--output=cat", "--no-pager", f"--unit={unit}")
        say(f"log:{unit}", one_line(log.stdout))
    failed = run("systemctl", "--failed", "--plain", "--no-legend", "--no-pager")
    say("failed", " ".join(line.split()[0] for line in failed.stdout.splitlines() if line.strip()))
    current = status()
    say("status", json.dumps(current))
    say("boot-times", boot_times())
    say("etc:site", read(f"/etc/{TEST_DIR}/site.conf"))
    say("etc:defaults", read(f"/etc/{TEST_DIR}/defaults.conf"))
    say("var:note", read(f"/var/lib/{TEST_DIR}/note"))
    say("var-history", " ".join(read(f"/var/lib/{TEST_DIR}/history").split()))
    history = Path(f"/var/lib/{TEST_DIR}/history")
    history.parent.mkdir(parents=True, exist_ok=True)
    with open(history, "a") as f:
        f.write(rel.get("VERSION_ID", "?") + "\n")
    return current


def step_name() -> str:
    if not STEP.exists():
        run("modprobe", "qemu_fw_cfg")
    return read(STEP) or "report"


def update(current: Any) -> None:
    """What an admin does: change a setting, keep some data, install the update."""
    site = Path(f"/etc/{TEST_DIR}/site.conf")
    site.write_text(site.read_text().replace("color=blue", "color=green"))
    note = Path(f"/var/lib/{TEST_DIR}/note")
    note.write_text(f"written by {os_release().get('VERSION_ID')} before the update\n")
    for _ in range(60):
        if UPDATE_DEVICE.exists():
            break
        time.sleep(0.5)
    UPDATE_MOUNT.mkdir(exist_ok=True)
    proc = run("mount", "-o", "ro", str(UPDATE_DEVICE), str(UPDATE_MOUNT))
    if proc.returncode != 0:
        raise RuntimeError(f"cannot mount the update disk: {one_line(proc.stderr)}")
    try:
        booted = next(d for d in current["deployments"] if d["booted"])
        kargs = [f"--karg={k}" for k in booted["kargs"]]
        started = time.monotonic()
        # Switched at once: this scenario reboots into B without a finalizing shutdown.
        deployed = json.loads(
            bootkit("deploy", "--json", "--no-stage", *kargs, str(UPDATE_MOUNT / UPDATE_TAR))
        )
        say("step-seconds", f"{time.monotonic() - started:.1f}")
        say("deploy", json.dumps(deployed))
    finally:
        run("umount", str(UPDATE_MOUNT))


def rollback(_current: Any) -> None:
    started = time.monotonic()
    say("rollback", one_line(bootkit("rollback")))
    say("step-seconds", f"{time.monotonic() - started:.1f}")


def main() -> None:
    try:
        current = report()
        step = step_name()
        say("step", step)
        if step in ("update", "rollback"):
            {"update": update, "rollback": rollback}[step](current)
            say("status-after", json.dumps(status()))
            # bootkit wrote to /sysroot in a mount namespace of its own; here it stays read-only.
            say("write-after:/sysroot", "yes" if writable("/sysroot") else "no")
    except Exception as err:
        say("step-error", f"{type(err).__name__}: {one_line(str(err))}")
    finally:
        os.sync()
        say("done")
        # Straight to systemd-shutdown, which still unmounts or remounts every
        # filesystem read-only: stopping each service first only costs time here.
        run("systemctl", "--force", "poweroff")


if __name__ == "__main__":
    main()
