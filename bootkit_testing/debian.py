"""A real distribution to deploy and boot: Debian 12 with systemd, and dracut with bootkit's module.

The tree is made in two layers:

- the base (slow, cached in `.cache/debian/base-<key>/`): `debootstrap --variant=minbase`
  of bookworm with systemd, python3 and bootkit's libraries, trimmed of docs, locales
  and apt caches; the test kernel at usr/lib/modules/<kver>/vmlinuz with the few
  modules a QEMU guest needs; and usr/lib/modules/<kver>/initramfs.img, built by the
  tree's own dracut (in a chroot) with bootkit's dracut module. The key hashes every
  input (package list, mirror, kernel, module list, dracut options and module files),
  so a change to any of them builds a new base; the .debs are kept in
  `.cache/debian/debs` for the next build.
- the test layer (fast, per test session): a hardlinked copy of the base with the
  bootkit package from this checkout and its systemd units, an fstab that mounts the
  ESP where bootkit expects $BOOT, and `bootkit-test-report.service`, which reports on
  the serial console once the boot reached multi-user.target (and was marked good),
  runs this boot's step of the test scenario and powers off. Files of the copy are replaced, never written in place,
  so the cached base is never changed.

What the guest reports is one line `BOOTKIT-TEST <key>=<value>` per finding (the
format of bootkit_testing/harness.py's BootReport):

- `version`, `pretty-name`: from the booted tree's os-release;
- `bootkit`: the `bootkit=` kernel argument;
- `mount:<path>`: `root=<subtree of the filesystem> options=<mount options>` of the
  mount holding /, /usr, /etc, /var, /sysroot and /sysroot/efi (findmnt), and
  `source:<path>` the device;
- `write:<path>`: whether creating a file there works;
- `multi-user`, `boot-complete`: `systemctl is-active` of those targets;
- `unit:<unit>`, `log:<unit>`: `systemctl is-active` and this boot's journal of the
  units that mark a counted boot good (systemd-bless-boot.service and
  bootkit-mark-good.service, which `bootkit systemd install` put in the tree);
- `failed`: `systemctl --failed` (unit names, empty when none failed);
- `boot-times`: seconds in the kernel, the initramfs, and until multi-user.target;
- `status`: `bootkit status --json` on one line;
- `etc:site`, `etc:defaults`: the two test files under /etc/bootkit-test;
- `var:note`, `var-history`: what earlier boots left in /var/lib/bootkit-test;
- `step`: the scenario step QEMU passed in (fw_cfg `opt/bootkit-test/step`), then
  what the step did: `deploy` (bootkit deploy --json), `step-seconds`,
  `status-after`, `write-after:/sysroot` (whether /sysroot is writable for the
  report after bootkit changed it), or `step-error`;
- `done`: the report is complete; the guest powers off next.

Steps: `update` edits /etc/bootkit-test/site.conf, writes /var/lib/bootkit-test/note
and runs `bootkit deploy` of the tar archive on the disk labelled `bootkit-update`;
`rollback` runs `bootkit rollback`; anything else only reports.

Trees A and B (TREE_A, TREE_B) differ in os-release (VERSION_ID 12 and 12.1, and
PRETTY_NAME, which is the menu title) and in /etc/bootkit-test/defaults.conf. The
trees carry a plain Debian /etc: bootkit keeps it as the deployment's defaults in
usr/etc and merges the changes made in the running deployment into the new /etc.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from bootkit.boot.units import install_units
from bootkit.diskimage import BOOT_DIR, ESP_LABEL
from bootkit.initramfs import kmod

from .harness import bootkit_command
from .kernel import KernelTree

REPO = Path(__file__).resolve().parents[1]
CACHE = REPO / ".cache" / "debian"
SUITE = "bookworm"
DEFAULT_MIRROR = "http://deb.debian.org/debian"
# Bump when the base recipe changes in a way the key does not see.
RECIPE = "1"

PACKAGES = (
    "systemd-sysv", "udev", "kmod",
    # bootkit itself; debootstrap does not resolve the virtual package
    # python3-cffi-backend-api-* that python3-cryptography depends on.
    "python3", "python3-click", "python3-construct", "python3-pyelftools",
    "python3-pefile", "python3-cryptography", "python3-cffi-backend",
    # The initramfs is built by the tree's own dracut, so its systemd matches the tree's.
    "dracut-core",
    # systemd-bless-boot, which marks a counted systemd-boot entry good, alongside
    # bootkit's own unit.
    "systemd-boot",
)

# What the guest loads: the root disk and ext4 (also in the initramfs), the ESP
# (vfat with its code pages), fw_cfg for the scenario step, and what systemd mounts early.
MODULES = (
    "virtio_pci", "virtio_blk", "virtio_scsi", "virtio_console", "virtio_rng",
    "ext4", "crc32c_generic", "vfat", "nls_cp437", "nls_ascii", "nls_utf8",
    "efivarfs", "autofs4", "configfs", "fuse", "loop", "binfmt_misc", "qemu_fw_cfg",
)

# dracut modules nothing here needs: no encrypted, LVM, RAID, NVDIMM or network
# storage, no resume, no separate /usr, no return to the initramfs at shutdown.
DRACUT_OMIT = (
    "crypt", "dm", "kernel-modules-extra", "nvdimm", "lunmask", "resume",
    "terminfo", "virtiofs", "usrmount", "shutdown",
)
DRACUT_ARGS = (
    "--no-hostonly", "--no-hostonly-cmdline", "--no-early-microcode",
    "--add", "bootkit", "--omit", " ".join(DRACUT_OMIT),
)
DRACUT_MODULE = REPO / "bootkit" / "data" / "dracut" / "90bootkit"

# Trimmed from the base: nothing in this test system reads them at run time, and each
# file costs time in every import of the tree under TCG. (directory, names kept in it)
TRIM = (
    ("usr/share/doc", ()), ("usr/share/man", ()), ("usr/share/info", ()),
    ("usr/share/locale", ()), ("usr/share/bash-completion", ()), ("usr/share/zsh", ()),
    ("usr/share/lintian", ()),
    ("usr/share/zoneinfo", ("Etc",)),  # /etc/localtime points to Etc/UTC
    ("usr/lib/python3.11/lib2to3", ()), ("usr/lib/python3.11/test", ()),
    ("usr/lib/x86_64-linux-gnu/gconv", ("gconv-modules", "gconv-modules.d")),
    ("var/cache/apt", ()), ("var/lib/apt/lists", ()), ("var/log", ()),
)
# python3-pefile depends on python3-future but never imports it.
PURGE = ("python3-future",)

UPDATE_LABEL = "bootkit-update"
UPDATE_TAR = "tree.tar"
STEP_FW_CFG = "opt/bootkit-test/step"
CHROOT_PATH = "/usr/sbin:/usr/bin:/sbin:/bin"


class DebianUnavailable(Exception):
    """The Debian tree cannot be built on this machine; the message says why."""


@dataclass(frozen=True)
class OsRelease:
    version_id: str
    version: str
    pretty_name: str

    def render(self) -> str:
        return (
            f'PRETTY_NAME="{self.pretty_name}"\n'
            'NAME="Debian GNU/Linux"\n'
            f'VERSION_ID="{self.version_id}"\n'
            f'VERSION="{self.version}"\n'
            f"VERSION_CODENAME={SUITE}\n"
            "ID=debian\n"
            'HOME_URL="https://www.debian.org/"\n'
        )


@dataclass(frozen=True)
class Variant:
    """What tells two test trees apart: os-release and one default file in /etc."""

    name: str
    os_release: OsRelease
    defaults: str  # etc/bootkit-test/defaults.conf

    @property
    def title(self) -> str:
        return self.os_release.pretty_name


TREE_A = Variant(
    "A", OsRelease("12", "12 (bookworm)", "Debian GNU/Linux 12 (bootkit test A)"), "tuning=old\n"
)
TREE_B = Variant(
    "B", OsRelease("12.1", "12.1 (bookworm)", "Debian GNU/Linux 12.1 (bootkit test B)"),
    "tuning=new\n",
)
# The file the guest edits before the update: the change must survive it.
SITE_CONF = "color=blue\n"
SITE_CONF_EDITED = "color=green\n"


# --- running things --------------------------------------------------------------------


def _run(argv: Sequence[str | Path], log: Path | None = None, **kwargs: object) -> str:
    started = time.monotonic()
    proc = subprocess.run(
        [str(a) for a in argv], capture_output=True, text=True, check=False, **kwargs  # type: ignore[call-overload]
    )
    if log is not None:
        with open(log, "a") as f:
            f.write(f"$ {' '.join(map(str, argv))}\n{proc.stdout}{proc.stderr}"
                    f"({time.monotonic() - started:.1f} s, exit status {proc.returncode})\n")
    if proc.returncode != 0:
        tail = "\n".join((proc.stderr or proc.stdout).strip().splitlines()[-20:])
        raise RuntimeError(f"{' '.join(map(str, argv))} failed ({proc.returncode}):\n{tail}")
    return str(proc.stdout)


# Mounts what chroot'ed tools expect, in a mount namespace of its own, so the mounts
# end with the command whatever happens.
_IN_TREE = (
    'root=$1; shift; '
    'mount -t proc proc "$root/proc" && mount -t sysfs sysfs "$root/sys" && '
    'mount --rbind /dev "$root/dev" && exec chroot "$root" "$@"'
)


def run_in_tree(tree: Path, argv: Sequence[str], log: Path | None = None) -> str:
    env = {"PATH": CHROOT_PATH, "LANG": "C.UTF-8", "HOME": "/root"}
    return _run(
        ["unshare", "--mount", "--propagation", "private", "sh", "-c", _IN_TREE, "sh",
         tree, *argv],
        log, env=env,
    )


def missing_prerequisites() -> list[str]:
    missing = []
    if os.geteuid() != 0:
        missing.append("root (debootstrap and chroot)")
    for tool in ("debootstrap", "unshare", "chroot", "depmod", "tar", "mke2fs"):
        if shutil.which(tool) is None:
            missing.append(tool)
    return missing


# --- the mirror ------------------------------------------------------------------------


def _sources_entries(text: str) -> Iterator[tuple[list[str], list[str]]]:
    """(URIs, suites) of each entry of a deb822 .sources file."""
    for stanza in text.split("\n\n"):
        fields: dict[str, str] = {}
        for line in stanza.splitlines():
            if line.startswith("#") or ":" not in line or line[:1].isspace():
                continue
            key, _, value = line.partition(":")
            fields[key.strip().lower()] = value.strip()
        if "deb" in fields.get("types", "").split():
            yield fields.get("uris", "").split(), fields.get("suites", "").split()


def _list_entries(text: str) -> Iterator[tuple[list[str], list[str]]]:
    """(URIs, suites) of each `deb` line of a one-line-style sources.list."""
    for line in text.splitlines():
        words = line.split("#", 1)[0].split()
        if len(words) >= 3 and words[0] == "deb":
            if words[1].startswith("["):
                words = [words[0], *words[next(i for i, w in enumerate(words) if w.endswith("]")) + 1:]]
            if len(words) >= 3:
                yield [words[1]], [words[2]]


def find_mirror(apt_dir: Path = Path("/etc/apt")) -> str:
    """The Debian mirror this machine's apt uses for the suite (BOOTKIT_DEBIAN_MIRROR wins)."""
    if env := os.environ.get("BOOTKIT_DEBIAN_MIRROR"):
        return env
    files = [apt_dir / "sources.list", *sorted((apt_dir / "sources.list.d").glob("*"))]
    for path in files:
        try:
            text = path.read_text()
        except OSError:
            continue
        entries = _sources_entries(text) if path.suffix == ".sources" else _list_entries(text)
        for uris, suites in entries:
            if SUITE in suites:
                for uri in uris:
                    if not uri.rstrip("/").endswith("-security"):
                        return uri.rstrip("/")
    return DEFAULT_MIRROR


# --- the base layer ----------------------------------------------------------------------


def _hash_file(h: hashlib._Hash, path: Path) -> None:
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)


def base_key(kernel: KernelTree, mirror: str) -> str:
    h = hashlib.sha256()
    h.update(json.dumps({
        "recipe": RECIPE, "suite": SUITE, "mirror": mirror, "packages": PACKAGES,
        "modules": MODULES, "dracut": DRACUT_ARGS, "trim": TRIM, "purge": PURGE,
        "kernel": kernel.version,
    }, sort_keys=True).encode())
    _hash_file(h, kernel.vmlinuz)
    for path in sorted(DRACUT_MODULE.iterdir()):
        h.update(path.name.encode())
        _hash_file(h, path)
    return h.hexdigest()[:16]


def _debootstrap(root: Path, mirror: str, log: Path) -> None:
    debs = CACHE / "debs"
    debs.mkdir(parents=True, exist_ok=True)
    _run(["debootstrap", "--variant=minbase", f"--include={','.join(PACKAGES)}",
          f"--cache-dir={debs}", SUITE, root, mirror], log)


def _empty(directory: Path, keep: Sequence[str] = ()) -> None:
    if not directory.is_dir():
        return
    for child in directory.iterdir():
        if child.name in keep:
            continue
        if child.is_dir() and not child.is_symlink():
            shutil.rmtree(child)
        else:
            child.unlink()


def _trim(root: Path, log: Path) -> None:
    run_in_tree(root, ["dpkg", "--purge", "--force-depends", *PURGE], log)
    for rel, keep in TRIM:
        _empty(root / rel, keep)
    # devtmpfs is mounted over /dev at boot; nodes here would only be skipped on import.
    _empty(root / "dev")


def _install_kernel(root: Path, kernel: KernelTree, log: Path) -> Path:
    """vmlinuz and the modules in MODULES (with what they need) under usr/lib/modules/<kver>."""
    dest = root / "usr/lib/modules" / kernel.version
    dest.mkdir(parents=True)
    shutil.copy2(kernel.vmlinuz, dest / "vmlinuz")
    for name in ("modules.order", "modules.builtin", "modules.builtin.modinfo"):
        if (kernel.modules_dir / name).is_file():
            shutil.copy2(kernel.modules_dir / name, dest / name)
    order = kmod.load_order(kmod.ModuleTree(kernel.modules_dir), MODULES)
    for module in order.modules:
        target = dest / module.relpath
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(module.path, target)
    _run(["depmod", "-b", root, kernel.version], log)
    return dest


def _build_initramfs(root: Path, kernel: KernelTree, log: Path) -> None:
    module_dir = root / "usr/lib/dracut/modules.d/90bootkit"
    _run([*bootkit_command(), "dracut", "install", "--dest", module_dir], log)
    image = f"/usr/lib/modules/{kernel.version}/initramfs.img"
    run_in_tree(root, ["dracut", *DRACUT_ARGS, "--kver", kernel.version, "--force", image], log)


def build_base(dest: Path, kernel: KernelTree, mirror: str, log: Path) -> None:
    """debootstrap + kernel + initramfs into `dest` (which must not exist)."""
    _debootstrap(dest, mirror, log)
    _trim(dest, log)
    _install_kernel(dest, kernel, log)
    _build_initramfs(dest, kernel, log)


@contextlib.contextmanager
def _cache_lock() -> Iterator[None]:
    CACHE.mkdir(parents=True, exist_ok=True)
    with open(CACHE / "lock", "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        yield


def _remove_stale(keep: Path) -> None:
    """Bases built from other inputs: each is a few hundred MB, and rebuilt when needed."""
    for path in CACHE.glob("base-*"):
        if path.name.startswith(keep.name):
            continue
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)


def ensure_base(kernel: KernelTree) -> Path:
    """The cached base tree for `kernel`, built first when there is none for these inputs."""
    missing = missing_prerequisites()
    if missing:
        raise DebianUnavailable(f"cannot build the Debian tree here, missing: {', '.join(missing)}")
    mirror = find_mirror()
    key = base_key(kernel, mirror)
    base = CACHE / f"base-{key}"
    with _cache_lock():
        if (base / "usr/lib/modules" / kernel.version / "initramfs.img").is_file():
            return base
        work = Path(tempfile.mkdtemp(prefix=f"build-{key}-", dir=CACHE))
        log = CACHE / f"base-{key}.log"
        log.unlink(missing_ok=True)
        try:
            build_base(work / "root", kernel, mirror, log)
            if base.exists():
                shutil.rmtree(base)
            os.rename(work / "root", base)
            _remove_stale(keep=base)
        except RuntimeError as err:
            raise RuntimeError(f"building the Debian base tree failed (log: {log}):\n{err}") from None
        finally:
            shutil.rmtree(work, ignore_errors=True)
    return base


# --- the test layer -------------------------------------------------------------------------

FSTAB = f"""\
# The physical root is at /sysroot (read-only); bootkit keeps $BOOT on the ESP at {BOOT_DIR} there.
LABEL={ESP_LABEL} /sysroot{BOOT_DIR} vfat umask=0077,shortname=winnt 0 0
"""

REPORT_UNIT = """\
[Unit]
Description=bootkit test: report on the console, run this boot's step, power off
# Once the boot got there: it reports on the system as booted, with this boot
# marked good where boot counting is on.
After=multi-user.target systemd-bless-boot.service bootkit-mark-good.service

[Service]
Type=oneshot
ExecStart=/usr/lib/bootkit-test/report
StandardOutput=tty
StandardError=tty
TTYPath=/dev/ttyS0
TTYReset=no
TTYVHangup=no

[Install]
WantedBy=multi-user.target
"""

REPORT = r'''#!/usr/bin/python3
"""Report what a person would check on the booted system, do this boot's step, power off."""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

MARKER = "BOOTKIT-TEST"
STEP = Path("/sys/firmware/qemu_fw_cfg/by_name/@STEP_FW_CFG@/raw")
UPDATE_DEVICE = Path("/dev/disk/by-label/@UPDATE_LABEL@")
UPDATE_MOUNT = Path("/run/bootkit-update")
TEST_DIR = "bootkit-test"
# What marks a counted boot good once boot-complete.target is reached.
MARK_GOOD_UNITS = ("systemd-bless-boot.service", "bootkit-mark-good.service")


def say(key, value=""):
    # One write per line, so other console output cannot split it.
    os.write(1, f"{MARKER} {key}={value}\n".encode())


def run(*argv):
    return subprocess.run(argv, capture_output=True, text=True, check=False)


def one_line(text):
    return " | ".join(line.strip() for line in text.strip().splitlines())


def read(path):
    try:
        return Path(path).read_text().strip()
    except OSError:
        return ""


def os_release():
    values = {}
    for line in read("/etc/os-release").splitlines():
        key, _, value = line.partition("=")
        values[key] = value.strip('"')
    return values


def bootkit(*args):
    proc = run("bootkit", *args)
    if proc.returncode != 0:
        raise RuntimeError(f"bootkit {' '.join(args)}: {one_line(proc.stderr + proc.stdout)}")
    return proc.stdout


def status():
    return json.loads(bootkit("status", "--json"))


def boot_times():
    """Seconds in the kernel, in the initramfs, and from there to multi-user.target."""
    props = run("systemctl", "show", "--property=InitRDTimestampMonotonic",
                "--property=UserspaceTimestampMonotonic").stdout
    t = {k: int(v or 0) for k, _, v in (line.partition("=") for line in props.splitlines())}
    target = run("systemctl", "show", "--property=ActiveEnterTimestampMonotonic",
                 "--value", "multi-user.target").stdout.strip()
    initrd, userspace = t.get("InitRDTimestampMonotonic", 0), t.get("UserspaceTimestampMonotonic", 0)
    parts = {"kernel": initrd, "initrd": userspace - initrd, "userspace": int(target or 0) - userspace}
    return " ".join(f"{k}={v / 1e6:.1f}" for k, v in parts.items())


def writable(path):
    probe = Path(path) / ".bootkit-test-probe"
    try:
        probe.write_text("probe\n")
        probe.unlink()
        return True
    except OSError:
        return False


def report():
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


def step_name():
    if not STEP.exists():
        run("modprobe", "qemu_fw_cfg")
    return read(STEP) or "report"


def update(current):
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
        deployed = json.loads(bootkit("deploy", "--json", *kargs, str(UPDATE_MOUNT / "@UPDATE_TAR@")))
        say("step-seconds", f"{time.monotonic() - started:.1f}")
        say("deploy", json.dumps(deployed))
    finally:
        run("umount", str(UPDATE_MOUNT))


def rollback(_current):
    started = time.monotonic()
    say("rollback", one_line(bootkit("rollback")))
    say("step-seconds", f"{time.monotonic() - started:.1f}")


def main():
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


main()
'''.replace("@STEP_FW_CFG@", STEP_FW_CFG).replace("@UPDATE_LABEL@", UPDATE_LABEL).replace(
    "@UPDATE_TAR@", UPDATE_TAR
)

BOOTKIT_SCRIPT = """\
#!/usr/bin/python3
import sys

from bootkit.cli import main

sys.exit(main())
"""


def _replace(path: Path, text: str, mode: int = 0o644) -> None:
    """Write `path` as a new file: in a hardlinked copy, writing in place would change the base."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.is_symlink() or path.exists():
        path.unlink()
    path.write_text(text)
    os.chmod(path, mode)


def _symlink(path: Path, target: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.is_symlink() or path.exists():
        path.unlink()
    path.symlink_to(target)


def _install_bootkit(tree: Path) -> None:
    dest = tree / "usr/lib/python3/dist-packages/bootkit"
    if dest.exists():
        shutil.rmtree(dest)
    shutil.copytree(REPO / "bootkit", dest, ignore=shutil.ignore_patterns("__pycache__"))
    _replace(tree / "usr/bin/bootkit", BOOTKIT_SCRIPT, 0o755)
    # What a distribution's tree does to have its boots marked good.
    install_units(tree, BOOT_DIR)
    # /usr is read-only in the guest: compile now, and so that the byte code stays
    # valid whatever the import does to file times.
    run_in_tree(tree, ["python3", "-m", "compileall", "-q", "--invalidation-mode",
                       "unchecked-hash", "/usr/lib/python3/dist-packages/bootkit"])


def _configure(tree: Path, variant: Variant) -> None:
    _replace(tree / "usr/lib/os-release", variant.os_release.render())
    _replace(tree / "etc/fstab", FSTAB)
    _replace(tree / "etc/hostname", "bootkit-debian\n")
    _replace(tree / "etc/bootkit-test/site.conf", SITE_CONF)
    _replace(tree / "etc/bootkit-test/defaults.conf", variant.defaults)
    units = tree / "etc/systemd/system"
    _replace(tree / "usr/lib/systemd/system/bootkit-test-report.service", REPORT_UNIT)
    _symlink(units / "multi-user.target.wants/bootkit-test-report.service",
             "/usr/lib/systemd/system/bootkit-test-report.service")
    _replace(tree / "usr/lib/bootkit-test/report", REPORT, 0o755)
    # The report owns the serial console; nobody logs in.
    _symlink(units / "serial-getty@ttyS0.service", "/dev/null")
    # The ESP is mounted by fstab where bootkit wants it, not also at /boot or /efi.
    _symlink(tree / "etc/systemd/system-generators/systemd-gpt-auto-generator", "/dev/null")


def _copy_tree(src: Path, dest: Path) -> None:
    """Hardlink the files of `src` into `dest`, or copy them across filesystems."""
    try:
        _run(["cp", "-a", "--link", src, dest])
    except RuntimeError:
        shutil.rmtree(dest, ignore_errors=True)
        _run(["cp", "-a", "--reflink=auto", src, dest])


def make_tree(dest: Path, base: Path, variant: Variant) -> Path:
    """A test tree at `dest` (which must not exist): the base plus bootkit and the report."""
    _copy_tree(base, dest)
    _install_bootkit(dest)
    _configure(dest, variant)
    return dest


def derive_tree(dest: Path, tree: Path, variant: Variant) -> Path:
    """Another variant of a test tree, sharing its files (hardlinks) except what differs."""
    _copy_tree(tree, dest)
    _replace(dest / "usr/lib/os-release", variant.os_release.render())
    _replace(dest / "etc/bootkit-test/defaults.conf", variant.defaults)
    return dest


def _has_xattrs(tree: Path) -> bool:
    for directory, dirs, files in os.walk(tree):
        for name in (*dirs, *files):
            if os.listxattr(os.path.join(directory, name), follow_symlinks=False):
                return True
    return False


def _tar_format(tree: Path) -> list[str]:
    # Extended attributes need a pax header per member, which costs time to read in
    # the guest; without any, the GNU format has none.
    if _has_xattrs(tree):
        return ["--format=posix", "--xattrs", "--xattrs-include=*"]
    return ["--format=gnu"]


def make_update_disk(dest: Path, tree: Path, work: Path) -> Path:
    """A raw ext4 disk image labelled UPDATE_LABEL holding UPDATE_TAR, the archive of `tree`."""
    content = work / "update-content"
    content.mkdir()
    archive = content / UPDATE_TAR
    _run(["tar", "--create", *_tar_format(tree), "--file", archive, "--directory", tree,
          "--numeric-owner", "."])
    size = archive.stat().st_size + (64 << 20)
    _run(["mke2fs", "-q", "-t", "ext4", "-L", UPDATE_LABEL, "-d", content, dest,
          f"{size // 1024}k"])
    archive.unlink()
    return dest
