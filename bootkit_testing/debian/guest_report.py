#!/usr/bin/python3
"""Report what a person would check on the booted system, do this boot's step, power off.

Runs in the Debian guest as /usr/lib/bootkit-test/report (bootkit-test-report.service),
with the guest's own python3 and nothing but the standard library.
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import time
from pathlib import Path
from typing import Any

MARKER = "BOOTKIT-TEST"
# What the host passes in and attaches; bootkit_testing.debian reads these too.
STEP_FW_CFG = "opt/bootkit-test/step"
UPDATE_LABEL = "bootkit-update"
UPDATE_TAR = "tree.tar"
# The OCI scenario's update disk holds an oci-archive instead; the image's version 2
# appends a line IMAGE_MARKER<version> to the files of one package (CHANGED_FILE's).
OCI_ARCHIVE = "os.tar"
IMAGE_MARKER = "bootkit-test-image="
CHANGED_FILE = "/usr/bin/hostname"

STEP = Path(f"/sys/firmware/qemu_fw_cfg/by_name/{STEP_FW_CFG}/raw")
UPDATE_DEVICE = Path(f"/dev/disk/by-label/{UPDATE_LABEL}")
UPDATE_MOUNT = Path("/run/bootkit-update")
TEST_DIR = "bootkit-test"
# What marks a counted boot good once boot-complete.target is reached, and what
# finalizes a staged update at shutdown or reports that finalizing failed.
BOOTKIT_UNITS = (
    "systemd-bless-boot.service",
    "bootkit-mark-good.service",
    "bootkit-finalize-staged.service",
    "bootkit-finalize-failed.service",
)
OS_NAME = "debian"
BOOT = "/sysroot/efi"  # $BOOT, the ESP, mounted read-only by the guest's fstab
DEPLOY_DIR = f"/sysroot/bootkit/deploy/{OS_NAME}/deploy"
# What a person keeps on an atomic desktop: every update, rollback and cleanup keeps it.
USER_DATA = (
    "/home/alice/notes.txt",
    "/root/notes.txt",
    "/var/lib/flatpak/app/org.example.Notes/notes.txt",
    "/var/lib/containers/storage/notes.txt",
    "/usr/local/share/notes.txt",
    "/opt/notes.txt",
)
# The atomic-desktop layout: these are symlinks into /var (or /run).
LAYOUT = ("/home", "/root", "/opt", "/srv", "/mnt", "/media", "/usr/local")
# The kernel argument the admin adds in the 'update' step.
ADMIN_KARG = "bootkit.test.admin=1"
# With a TPM: the PCR the signed policy covers, and what unlocked the root's LUKS2 volume.
TPM = Path("/sys/class/tpm/tpm0")
POLICY_PCR = 11


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


def mount_options(path: str) -> str:
    proc = run("findmnt", "--noheadings", "--raw", "--output", "VFS-OPTIONS", "--mountpoint", path)
    return proc.stdout.strip()


def listing(path: str) -> str:
    try:
        return " ".join(sorted(os.listdir(path)))
    except OSError as err:
        return f"({err.strerror})"


def report_layout_and_data() -> None:
    """The atomic-desktop symlinks, the user's data, and what bootkit keeps on disk."""
    for path in LAYOUT:
        say(f"link:{path}", os.readlink(path) if os.path.islink(path) else "(not a symlink)")
    for path in USER_DATA:
        say(f"data:{path}", read(path))
    say("cmdline", read("/proc/cmdline"))
    say("ls:deploy", listing(DEPLOY_DIR))
    say("ls:boot-bootkit", listing(f"{BOOT}/bootkit"))
    say("ls:payloads", listing(f"{BOOT}/bootkit/{OS_NAME}"))


def image_marker() -> str:
    """The IMAGE_MARKER line CHANGED_FILE ends with, if any."""
    try:
        last = Path(CHANGED_FILE).read_bytes().rstrip(b"\n").rpartition(b"\n")[2]
    except OSError as err:
        return f"({err.strerror})"
    text = last.decode("utf-8", errors="replace")
    return text if text.startswith(IMAGE_MARKER) else ""


def report_tpm() -> None:
    """PCR 11 as the report sees it, and what systemd-cryptsetup said in the initramfs."""
    say("pcr11", read(TPM / f"pcr-sha256/{POLICY_PCR}"))
    log = run("journalctl", "--boot", "--output=short-monotonic", "--no-pager",
              "--unit=systemd-cryptsetup@*")
    say("log:cryptsetup", one_line(log.stdout))


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
    for path in ("/usr", "/etc", "/var", "/sysroot", BOOT):
        say(f"write:{path}", "yes" if writable(path) else "no")
    say("multi-user", run("systemctl", "is-active", "multi-user.target").stdout.strip())
    # Where boot counting will look: boot-complete.target marks a boot good.
    say("boot-complete", run("systemctl", "is-active", "boot-complete.target").stdout.strip())
    for unit in BOOTKIT_UNITS:
        say(f"unit:{unit}", run("systemctl", "is-active", unit).stdout.strip())
        log = run("journalctl", "--boot", "--output=cat", "--no-pager", f"--unit={unit}")
        say(f"log:{unit}", one_line(log.stdout))
    failed = run("systemctl", "--failed", "--plain", "--no-legend", "--no-pager")
    say("failed", " ".join(line.split()[0] for line in failed.stdout.splitlines() if line.strip()))
    current = status()
    say("status", json.dumps(current))
    say("boot-times", boot_times())
    if TPM.exists():
        report_tpm()
    report_layout_and_data()
    say("etc:site", read(f"/etc/{TEST_DIR}/site.conf"))
    say("etc:defaults", read(f"/etc/{TEST_DIR}/defaults.conf"))
    say("var:note", read(f"/var/lib/{TEST_DIR}/note"))
    say("var-history", " ".join(read(f"/var/lib/{TEST_DIR}/history").split()))
    say("image-marker", image_marker())
    history = Path(f"/var/lib/{TEST_DIR}/history")
    history.parent.mkdir(parents=True, exist_ok=True)
    with open(history, "a") as f:
        f.write(rel.get("VERSION_ID", "?") + "\n")
    return current


def step_name() -> str:
    if not STEP.exists():
        run("modprobe", "qemu_fw_cfg")
    return read(STEP) or "report"


def mounted_update(name: str = UPDATE_TAR) -> Path:
    """The update disk, mounted read-only; the archive `name` on it is the update."""
    for _ in range(60):
        if UPDATE_DEVICE.exists():
            break
        time.sleep(0.5)
    UPDATE_MOUNT.mkdir(exist_ok=True)
    if not os.path.ismount(UPDATE_MOUNT):
        proc = run("mount", "-o", "ro", str(UPDATE_DEVICE), str(UPDATE_MOUNT))
        if proc.returncode != 0:
            raise RuntimeError(f"cannot mount the update disk: {one_line(proc.stderr)}")
    return UPDATE_MOUNT / name


def deploy(*options: str) -> Any:
    """`bootkit deploy` of the update, as an admin runs it; what it printed, as JSON."""
    started = time.monotonic()
    deployed = json.loads(bootkit("deploy", "--json", *options, str(mounted_update())))
    say("step-seconds", f"{time.monotonic() - started:.1f}")
    say("deploy", json.dumps(deployed))
    return deployed


def on_boot(*command: str) -> subprocess.CompletedProcess[str]:
    """Run `command` with $BOOT writable, in a mount namespace of its own: what a person
    does by hand on a machine whose ESP is mounted read-only."""
    script = f"mount -o remount,rw {BOOT} && cd {BOOT} && " + " ".join(command)
    return run("unshare", "--mount", "--propagation", "private", "sh", "-c", script)


def write_user_data() -> None:
    """What the admin changes and keeps: an edit in /etc, a note in /var, the user's files."""
    site = Path(f"/etc/{TEST_DIR}/site.conf")
    site.write_text(site.read_text().replace("color=blue", "color=green"))
    Path(f"/var/lib/{TEST_DIR}/note").write_text(
        f"written by {os_release().get('VERSION_ID')} before the update\n"
    )
    for path in USER_DATA:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(f"kept {path}\n")


def stage() -> None:
    """An update staged while the system runs; the admin goes on using it, then reboots."""
    deploy()
    say("status-staged", json.dumps(status()))
    write_user_data()


def crash() -> None:
    """Stage an update, then the machine goes down without a shutdown (see main)."""
    deploy("--stage")
    say("status-staged", json.dumps(status()))


def fail() -> None:
    """Stage an update, then fill $BOOT so that finalizing it at shutdown fails."""
    deploy("--stage")
    say("status-staged", json.dumps(status()))
    # Megabytes first, then sectors: a finalize writes only a few small entry files, and
    # the last clusters left by the first pass would hold them.
    on_boot("dd if=/dev/zero of=fill bs=1M status=none;"
            " dd if=/dev/zero of=fill-tail bs=512 status=none; sync")
    say("boot-free", on_boot("df --output=avail .").stdout.split()[-1])


def update() -> None:
    """Make room on $BOOT, update at once, add a kernel argument, clean up."""
    proc = on_boot("rm -f fill fill-tail")
    if proc.returncode != 0:
        raise RuntimeError(f"cannot empty $BOOT: {one_line(proc.stderr)}")
    deployed = deploy("--no-stage")
    say("kargs", one_line(bootkit("kargs", "--append", ADMIN_KARG, deployed["id"])))
    say("cleanup", one_line(bootkit("cleanup")))


def rollback() -> None:
    say("rollback", one_line(bootkit("rollback")))


# --- the OCI scenario: an image from an archive on the update disk ------------------------


def timed_bootkit(*args: str) -> Any:
    """`bootkit ARGS --json`, timed as the step's own seconds; what it printed, as JSON."""
    started = time.monotonic()
    out = bootkit(*args, "--json")
    say("step-seconds", f"{time.monotonic() - started:.1f}")
    return json.loads(out)


def upgrade_check() -> None:
    proc = run("bootkit", "upgrade", "--check")
    say("upgrade-check", f"{proc.returncode} {one_line(proc.stdout + proc.stderr)}")


def oci_switch() -> None:
    """The admin's edits, then a switch to the image in the archive, staged for shutdown."""
    archive = mounted_update(OCI_ARCHIVE)
    write_user_data()
    say("deploy", json.dumps(timed_bootkit("switch", "--unverified", "--stage",
                                           f"oci-archive:{archive}")))
    say("status-staged", json.dumps(status()))


def oci_upgrade() -> None:
    """The archive now holds the next version: check, then upgrade, staged for shutdown."""
    mounted_update(OCI_ARCHIVE)
    upgrade_check()
    say("deploy", json.dumps(timed_bootkit("upgrade", "--stage")))
    say("status-staged", json.dumps(status()))


def oci_rollback() -> None:
    """Nothing newer in the archive; back to the previous image."""
    mounted_update(OCI_ARCHIVE)
    upgrade_check()
    rollback()


# --- benchmarks/guest.py: a deploy from the update disk against tar, timed --------------

BENCH_TAR_DIR = Path("/var/tmp/bootkit-bench-tar")


def timed(*argv: str) -> str:
    """Run `argv`; "<wall> <user> <sys>" seconds it took, its children's CPU included."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.monotonic()
    proc = run(*argv)
    wall = time.monotonic() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)}: {one_line(proc.stderr + proc.stdout)}")
    user, system = after.ru_utime - before.ru_utime, after.ru_stime - before.ru_stime
    return f"{wall:.1f} {user:.1f} {system:.1f}"


def warm_update() -> Path:
    """The update's archive, read once: no timed command pays for its cold read."""
    archive = mounted_update()
    with open(archive, "rb") as f:
        while f.read(1 << 20):
            pass
    return archive


def bench_deploy() -> None:
    """`bootkit deploy --no-stage` of the update's archive, then, as the reference,
    `tar -xf` of it on the same filesystem (/var is on the physical root) and `sync`."""
    archive = warm_update()
    say("bench:deploy", timed("bootkit", "deploy", "--no-stage", "--json", str(archive)))
    BENCH_TAR_DIR.mkdir(parents=True)
    say("bench:tar", timed("sh", "-c", 'tar -xf "$1" -C "$2" && sync', "sh",
                           str(archive), str(BENCH_TAR_DIR)))
    say("bench:files", str(sum(len(dirs) + len(files) for _, dirs, files in os.walk(BENCH_TAR_DIR))))


def bench_profile() -> None:
    """The deploy of `bench_deploy` under cProfile: where its time goes in this guest,
    the functions that took most of it by themselves, one line each."""
    archive = warm_update()
    stats = Path("/run/bootkit-bench.prof")
    say("bench:deploy", timed("python3", "-m", "cProfile", "-o", str(stats), "/usr/bin/bootkit",
                              "deploy", "--no-stage", "--json", str(archive)))
    out = run("python3", "-c", PRINT_PROFILE, str(stats)).stdout
    for i, line in enumerate(out.splitlines()):
        say(f"profile:{i:02}", line.strip())


PRINT_PROFILE = """
import pstats, sys
stats = pstats.Stats(sys.argv[1]).sort_stats("tottime")
for func in stats.fcn_list[:30]:
    calls, _, tottime, cumtime, _ = stats.stats[func]
    print(f"{tottime:8.2f} {cumtime:8.2f} {calls:8d} {pstats.func_std_string(func)}")
"""


STEPS = {
    "stage": stage, "crash": crash, "fail": fail, "update": update, "rollback": rollback,
    "oci-switch": oci_switch, "oci-upgrade": oci_upgrade, "oci-rollback": oci_rollback,
    "bench-deploy": bench_deploy, "bench-profile": bench_profile,
}
# Steps that leave an update staged: the shutdown after them must stop the services,
# so that bootkit-finalize-staged.service finalizes it.
CLEAN_SHUTDOWN = ("stage", "fail", "oci-switch", "oci-upgrade")


def main() -> None:
    step = ""
    try:
        report()
        step = step_name()
        say("step", step)
        if step in STEPS:
            STEPS[step]()
            say("status-after", json.dumps(status()))
            # bootkit wrote to /sysroot and $BOOT in a mount namespace of its own; here
            # both stay read-only.
            for path in ("/sysroot", BOOT):
                say(f"write-after:{path}", "yes" if writable(path) else "no")
            say(f"mount-after:{BOOT}", mount_options(BOOT))
    except Exception as err:
        say("step-error", f"{type(err).__name__}: {one_line(str(err))}")
    finally:
        if step == "crash":
            say("done")
            # Down at once, as on a power cut: no sync, no service is stopped.
            Path("/proc/sysrq-trigger").write_text("b")
        os.sync()
        say("done")
        if step in CLEAN_SHUTDOWN:
            run("systemctl", "--no-block", "poweroff")
        else:
            # Straight to systemd-shutdown, which still unmounts or remounts every
            # filesystem read-only: stopping each service first only costs time here.
            run("systemctl", "--force", "poweroff")


if __name__ == "__main__":
    main()
