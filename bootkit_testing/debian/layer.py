"""The test layer of the Debian tree: bootkit from this checkout, and the guest's report.

A test tree is a hardlinked copy of the cached base (see `base`) with the bootkit
package from this checkout and its systemd units, an fstab that mounts the ESP where
bootkit expects $BOOT, and `bootkit-test-report.service`, which runs `guest_report`
once the boot reached multi-user.target. Files of the copy are replaced, never
written in place, so the cached base is never changed.

Trees A and B (TREE_A, TREE_B) differ in os-release (VERSION_ID 12 and 12.1, and
PRETTY_NAME, which is the menu title) and in /etc/bootkit-test/defaults.conf. The
trees carry a plain Debian /etc: bootkit keeps it as the deployment's defaults in
usr/etc and merges the changes made in the running deployment into the new /etc.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from bootkit.boot.units import install_units
from bootkit.diskimage import BOOT_DIR, ESP_LABEL

from .base import REPO, SUITE, run_command, run_in_tree
from .guest_report import UPDATE_LABEL, UPDATE_TAR

GUEST_REPORT = Path(__file__).with_name("guest_report.py")


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
    image_kargs: tuple[str, ...] = ()  # usr/lib/bootkit/kargs.d/50-test.conf

    @property
    def title(self) -> str:
        return self.os_release.pretty_name


TREE_A = Variant(
    "A", OsRelease("12", "12 (bookworm)", "Debian GNU/Linux 12 (bootkit test A)"), "tuning=old\n"
)
TREE_B = Variant(
    "B", OsRelease("12.1", "12.1 (bookworm)", "Debian GNU/Linux 12.1 (bootkit test B)"),
    "tuning=new\n",
    ("bootkit.test.image=b",),
)
# The file the guest edits before the update: the change must survive it.
SITE_CONF = "color=blue\n"
SITE_CONF_EDITED = "color=green\n"



FSTAB = f"""\
# The physical root is at /sysroot (read-only); bootkit keeps $BOOT on the ESP at {BOOT_DIR} there.
# Read-only, as Fedora CoreOS mounts its /boot: only bootkit writes there, in a mount
# namespace of its own.
LABEL={ESP_LABEL} /sysroot{BOOT_DIR} vfat ro,umask=0077,shortname=winnt 0 0
"""

# What bootkit says while finalizing a staged update at shutdown also goes to the
# console, where the test reads it (the journal does not outlive the boot).
FINALIZE_DROPIN = """\
[Service]
StandardOutput=journal+console
StandardError=journal+console
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


def _install_bootkit(tree: Path, checkout: Path) -> None:
    dest = tree / "usr/lib/python3/dist-packages/bootkit"
    if dest.exists():
        shutil.rmtree(dest)
    shutil.copytree(checkout / "bootkit", dest, ignore=shutil.ignore_patterns("__pycache__"))
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
    _replace(tree / "usr/lib/bootkit-test/report", GUEST_REPORT.read_text(), 0o755)
    _replace(units / "bootkit-finalize-staged.service.d/50-console.conf", FINALIZE_DROPIN)
    _image_kargs(tree, variant)
    # The report owns the serial console; nobody logs in.
    _symlink(units / "serial-getty@ttyS0.service", "/dev/null")
    # The ESP is mounted by fstab where bootkit wants it, not also at /boot or /efi.
    _symlink(tree / "etc/systemd/system-generators/systemd-gpt-auto-generator", "/dev/null")


def _image_kargs(tree: Path, variant: Variant) -> None:
    conf = tree / "usr/lib/bootkit/kargs.d/50-test.conf"
    if variant.image_kargs:
        _replace(conf, "# Kernel arguments this image needs\n" + "".join(f"{k}\n" for k in variant.image_kargs))
    elif conf.exists():
        conf.unlink()


def _copy_tree(src: Path, dest: Path) -> None:
    """Hardlink the files of `src` into `dest`, or copy them across filesystems."""
    try:
        run_command(["cp", "-a", "--link", src, dest])
    except RuntimeError:
        shutil.rmtree(dest, ignore_errors=True)
        run_command(["cp", "-a", "--reflink=auto", src, dest])


def make_tree(dest: Path, base: Path, variant: Variant, checkout: Path = REPO) -> Path:
    """A test tree at `dest` (which must not exist): the base plus bootkit and the report.

    bootkit comes from `checkout`: another one lets a benchmark compare two versions."""
    _copy_tree(base, dest)
    _install_bootkit(dest, checkout)
    _configure(dest, variant)
    return dest


def derive_tree(dest: Path, tree: Path, variant: Variant) -> Path:
    """Another variant of a test tree, sharing its files (hardlinks) except what differs."""
    _copy_tree(tree, dest)
    _replace(dest / "usr/lib/os-release", variant.os_release.render())
    _replace(dest / "etc/bootkit-test/defaults.conf", variant.defaults)
    _image_kargs(dest, variant)
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
    run_command(["tar", "--create", *_tar_format(tree), "--file", archive, "--directory", tree,
          "--numeric-owner", "."])
    size = archive.stat().st_size + (64 << 20)
    run_command(["mke2fs", "-q", "-t", "ext4", "-L", UPDATE_LABEL, "-d", content, dest,
          f"{size // 1024}k"])
    archive.unlink()
    return dest
