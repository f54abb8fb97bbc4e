"""The systemd units a deployment's tree needs from bootkit: marking a boot good.

With boot counting on, an entry keeps losing tries until something says the boot
went well. systemd's answer is boot-complete.target: units that check health order
themselves before it, and units that record success after it. bootkit ships
bootkit-mark-good.service for the second part. It clears bootkit's own GRUB
counter and renames the counted entry, which is also what systemd-bless-boot does
under systemd-boot. So a system needs only bootkit's unit, and one that also
ships systemd-bless-boot gets a drop-in that tells it where the ESP is.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from bootkit.base.confined import Tree
from bootkit.base.files import atomic_copy, atomic_symlink, atomic_write
from bootkit.contract import PHYSICAL_ROOT
from bootkit.errors import BootkitError
from bootkit.records.config import check_boot_dir

MARK_GOOD_UNIT = "bootkit-mark-good.service"
# Vendor units and their static enablement live in /usr, so that they are part of
# the immutable tree and every deployment of it has them, whatever its /etc says.
UNIT_DIR = Path("usr/lib/systemd/system")
WANTED_BY = "basic.target.wants"
BLESS_BOOT_DROPIN = Path("systemd-bless-boot.service.d/50-bootkit.conf")


def bless_boot_dropin(boot_dir: str) -> str:
    # systemd-bless-boot looks for the ESP at /efi, /boot and /boot/efi of the
    # running system; in a deployment, $BOOT is below the physical root instead.
    esp = f"{PHYSICAL_ROOT}{boot_dir}"
    return (
        "# Installed by bootkit: inside a deployment the ESP is mounted below the\n"
        "# physical root, where systemd-bless-boot does not look by itself.\n"
        "[Service]\n"
        f"Environment={_systemd_quoted(f'SYSTEMD_ESP_PATH={esp}')}\n"
        "# The ESP may be mounted read-only: the service then gets a mount namespace of\n"
        "# its own in which the ESP is writable, and the rest of the system still sees\n"
        "# it read-only (that mount keeps its own read-only flag).\n"
        "PrivateMounts=yes\n"
        f"ExecStartPre=-mount -o remount,rw {_systemd_quoted(esp)}\n"
    )


def _systemd_quoted(assignment: str) -> str:
    """One `Environment=` word: quoted, with systemd's escapes and `%` specifiers kept literal."""
    escaped = assignment.replace("\\", "\\\\").replace('"', '\\"').replace("%", "%%")
    return f'"{escaped}"'


@dataclass(frozen=True)
class Installed:
    unit: Path
    enabled: Path
    dropin: Path


def install_units(root: Path, boot_dir: str = "/efi") -> Installed:
    """Install and enable bootkit-mark-good.service, and the systemd-bless-boot drop-in.

    `root` is a tree about to be deployed (or `/`); `boot_dir` is where the
    sysroot mounts $BOOT (`bootkit init --boot-dir`).
    """
    try:
        check_boot_dir(boot_dir)
    except BootkitError as err:
        raise BootkitError(
            err.message, hint="give the boot directory the sysroot was made with, such as /efi"
        ) from None
    if not root.is_dir():
        raise BootkitError(f"{root} is not a directory", hint="give the root of the OS tree")
    unit_dir = root / UNIT_DIR
    # The tree's own symlinks lead inside it, as they will once it is booted.
    tree = Tree(root)
    try:
        unit_dir = tree.make_dirs(UNIT_DIR)
        wants = tree.make_dirs(UNIT_DIR / WANTED_BY)
        dropins = tree.make_dirs(UNIT_DIR / BLESS_BOOT_DROPIN.parent)
        with resources.as_file(resources.files("bootkit").joinpath("data", MARK_GOOD_UNIT)) as src:
            atomic_copy(src, unit_dir / MARK_GOOD_UNIT)
        enabled = wants / MARK_GOOD_UNIT
        atomic_symlink(f"../{MARK_GOOD_UNIT}", enabled)
        dropin = dropins / BLESS_BOOT_DROPIN.name
        atomic_write(dropin, bless_boot_dropin(boot_dir.rstrip("/")))
    except OSError as err:
        raise BootkitError(
            f"cannot install the units under {unit_dir}: {err.strerror or err}",
            hint="run it as the owner of the tree (root for /)",
        ) from None
    return Installed(unit_dir / MARK_GOOD_UNIT, enabled, dropin)
