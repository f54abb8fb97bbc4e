"""A tiny OS to deploy and boot: busybox, a distribution kernel, and an init that reports.

The tree is usr-merged (/bin, /sbin and /lib point into /usr) and carries the
kernel at usr/lib/modules/<kver>/vmlinuz with just the modules the initramfs
needs, so bootkit builds the initramfs at deploy time. Its /sbin/init does what a
person would do to check a boot and reports each finding on the console as one
line `BOOTKIT-TEST <key>=<value>`:

- `id`: the version baked into the tree (usr/lib/bootkit-testos/id);
- `bootkit`: the `bootkit=` argument the kernel got;
- `mount:<path>`: for /, /usr, /etc, /var and /sysroot, the subtree of the
  filesystem mounted there and its mount options, from /proc/self/mountinfo;
- `write:<path>`: whether creating a file under /usr, /etc, /var and /sysroot works;
- `var-history`, `etc-history`: what earlier boots appended to
  /var/lib/bootkit-test/history and /etc/bootkit-test/history (ids, oldest first);
- `done`: the report is complete.

Before the report, as soon as /dev is mounted, it writes INIT_STARTED to
/dev/kmsg: the console shows it with the kernel's timestamp, the moment the
deployment's own init began (benchmarks/initramfs.py measures boots with it).

It then appends its id to both history files, remounts the filesystem read-only
as a clean shutdown would, and powers off.

A tree built with `assess` also reports, before power-off, `boot-counted`: the
entry the boot loader counted this boot (LoaderBootCountPath, empty when none),
and `mark-good`: `ok` or `failed` when it ran bootkit-mark-good (assess="good"),
`skipped` for a tree that never marks its boots good (assess="bad").
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Sequence
from pathlib import Path

from bootkit.initramfs import kmod
from bootkit.initramfs.builder import data_file

from .kernel import KernelTree

BUSYBOX = Path("/bin/busybox")
OS_ID = "testos"
MARKER = "BOOTKIT-TEST"
# The kernel log line /sbin/init writes first; not a report line (no MARKER).
INIT_STARTED = "bootkit-testos: init started"

# What the initramfs needs to find and mount the root on a virtio disk.
FALLBACK_MODULES = ("virtio_pci", "virtio_blk", "ext4", "crc32c_generic")

INIT = r"""#!/bin/sh
# PID 1 of the bootkit test OS: report what the boot made of the system,
# leave traces for the next boot, power off.
PATH=/usr/sbin:/usr/bin
export PATH
mount -t proc proc /proc 2>/dev/null
mount -t sysfs sysfs /sys 2>/dev/null
mount -t devtmpfs devtmpfs /dev 2>/dev/null
# Into the kernel log rather than onto the console: the line gets the kernel's
# timestamp, which says how long the boot took to reach this init.
echo "@INIT_STARTED@" 2>/dev/null >/dev/kmsg
exec </dev/console >/dev/console 2>&1

say() {
    echo "BOOTKIT-TEST $1"
}

id=$(cat /usr/lib/bootkit-testos/id)
say "id=$id"
read -r cmdline </proc/cmdline
for arg in $cmdline; do
    case $arg in
        bootkit=*) say "$arg" ;;
    esac
done
# mountinfo: mount-id parent-id major:minor root mount-point options ...
while read -r _ _ _ root point options _; do
    case $point in
        /|/usr|/etc|/var|/sysroot) say "mount:$point=root=$root options=$options" ;;
    esac
done </proc/self/mountinfo
for dir in /usr /etc /var /sysroot; do
    if (echo probe >"$dir/.bootkit-test-probe") 2>/dev/null; then
        rm -f "$dir/.bootkit-test-probe"
        say "write:$dir=yes"
    else
        say "write:$dir=no"
    fi
done
say "var-history=$(tr '\n' ' ' 2>/dev/null </var/lib/bootkit-test/history)"
say "etc-history=$(tr '\n' ' ' 2>/dev/null </etc/bootkit-test/history)"
mkdir -p /var/lib/bootkit-test /etc/bootkit-test
echo "$id" >>/var/lib/bootkit-test/history
echo "$id" >>/etc/bootkit-test/history
if [ -x /usr/lib/bootkit-testos/assess ]; then
    /usr/lib/bootkit-testos/assess
fi
sync
# Read-only before power-off, as a clean shutdown leaves it: the journal is empty.
if mount -o remount,ro / 2>/dev/null; then
    say "clean-shutdown=yes"
else
    say "clean-shutdown=no"
fi
say "done"
poweroff -f
""".replace("@INIT_STARTED@", INIT_STARTED)

# What bootkit-mark-good needs in a busybox system: the EFI variables and the ESP.
ASSESS_MODULES = ("efivarfs", "vfat", "nls_cp437", "nls_ascii")
ASSESS_MODES = ("good", "bad")

ASSESS = r"""#!/bin/sh
# The test OS's boot assessment step: show what the boot loader counted, then
# mark the boot good (a tree that boots well) or not (one that does not).
while read -r module; do
    insmod "$module" 2>/dev/null
done </usr/lib/bootkit-testos/modules
mount -t efivarfs efivarfs /sys/firmware/efi/efivars 2>/dev/null
var=/sys/firmware/efi/efivars/LoaderBootCountPath-4a67b082-0a4c-41cf-b6c7-440b29bb8c4f
counted=""
if [ -r "$var" ]; then
    counted=$(tail -c +5 "$var" | tr -d '\000' | tr '\134' '/')
fi
echo "BOOTKIT-TEST boot-counted=${counted##*/}"
"""
ASSESS_GOOD = """if bootkit-mark-good; then
    echo "BOOTKIT-TEST mark-good=ok"
else
    echo "BOOTKIT-TEST mark-good=failed"
fi
"""
ASSESS_BAD = 'echo "BOOTKIT-TEST mark-good=skipped"\n'


def _initramfs_modules() -> Sequence[str]:
    try:
        from bootkit.initramfs import DEFAULT_MODULES
    except ImportError:
        return FALLBACK_MODULES
    return DEFAULT_MODULES


def _install_busybox(tree: Path) -> None:
    shutil.copy2(BUSYBOX, tree / "usr/bin/busybox")
    applets = subprocess.run(
        [str(BUSYBOX), "--list-full"], capture_output=True, text=True, check=True
    ).stdout.split()
    for applet in applets:
        # usr-merged: bin/x and usr/bin/x both land in usr/bin.
        rel = Path(applet)
        if rel.parts[0] != "usr":
            rel = Path("usr", *rel.parts)
        link = tree / rel
        if link.name == "busybox" or link.exists() or link.is_symlink():
            continue
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(os.path.relpath(tree / "usr/bin/busybox", link.parent))


def _install_kernel(tree: Path, kernel: KernelTree) -> None:
    dest = tree / "usr/lib/modules" / kernel.version
    dest.mkdir(parents=True)
    shutil.copy2(kernel.vmlinuz, dest / "vmlinuz")
    for name in ("modules.order", "modules.builtin", "modules.builtin.modinfo"):
        if (kernel.modules_dir / name).is_file():
            shutil.copy2(kernel.modules_dir / name, dest / name)
    order = kmod.load_order(kmod.ModuleTree(kernel.modules_dir), _initramfs_modules())
    for module in order.modules:
        target = dest / module.relpath
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(module.path, target)


def os_release(version: str) -> str:
    return (
        'NAME="Bootkit Test OS"\n'
        f"ID={OS_ID}\n"
        f"VERSION_ID={version}\n"
        f'PRETTY_NAME="Bootkit Test OS {version}"\n'
    )


def _install_assess(tree: Path, kernel: KernelTree, mode: str) -> None:
    if mode not in ASSESS_MODES:
        raise ValueError(f"assess must be one of {ASSESS_MODES}, not {mode!r}")
    dest = tree / "usr/lib/modules" / kernel.version
    order = kmod.load_order(kmod.ModuleTree(kernel.modules_dir), ASSESS_MODULES)
    listed = []
    for module in order.modules:
        target = dest / module.relpath
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(module.path, target)
        listed.append(f"/usr/lib/modules/{kernel.version}/{module.relpath}\n")
    lib = tree / "usr/lib/bootkit-testos"
    (lib / "modules").write_text("".join(listed))
    script = lib / "assess"
    script.write_text(ASSESS + (ASSESS_GOOD if mode == "good" else ASSESS_BAD))
    script.chmod(0o755)
    mark_good = tree / "usr/sbin/bootkit-mark-good"
    mark_good.unlink(missing_ok=True)
    mark_good.write_bytes(data_file("bootkit-mark-good"))
    mark_good.chmod(0o755)


def build_testos(
    dest: Path, kernel: KernelTree, version: str, assess: str | None = None
) -> Path:
    """Make the test OS tree of `version` at `dest` (which must not exist).

    `assess`: "good" or "bad" adds the boot assessment step (see the module's doc).
    """
    dest.mkdir(parents=True)
    os.chmod(dest, 0o755)
    for d in ("usr/bin", "usr/sbin", "usr/lib/bootkit-testos", "etc", "proc", "sys", "dev",
              "run", "tmp", "var", "sysroot", "efi", "root", "mnt"):
        (dest / d).mkdir(parents=True, exist_ok=True)
    os.chmod(dest / "tmp", 0o1777)
    for link, target in (("bin", "usr/bin"), ("sbin", "usr/sbin"), ("lib", "usr/lib")):
        (dest / link).symlink_to(target)
    _install_busybox(dest)
    init = dest / "usr/sbin/init"
    init.unlink(missing_ok=True)
    init.write_text(INIT)
    init.chmod(0o755)
    (dest / "usr/lib/os-release").write_text(os_release(version))
    (dest / "etc/os-release").symlink_to("../usr/lib/os-release")
    (dest / "etc/hostname").write_text(f"{OS_ID}\n")
    (dest / "etc/passwd").write_text("root:x:0:0:root:/root:/bin/sh\n")
    (dest / "etc/group").write_text("root:x:0:\n")
    (dest / "usr/lib/bootkit-testos/id").write_text(f"{version}\n")
    _install_kernel(dest, kernel)
    if assess is not None:
        _install_assess(dest, kernel, assess)
    return dest
