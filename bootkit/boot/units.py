"""The systemd units a deployment's tree needs from bootkit: marking a boot good, and
finalizing a staged deployment at shutdown.

With boot counting on, an entry keeps losing tries until something says the boot
went well. systemd's answer is boot-complete.target: units that check health order
themselves before it, and units that record success after it. bootkit ships
bootkit-mark-good.service for the second part. It clears bootkit's own GRUB
counter and renames the counted entry, which is also what systemd-bless-boot does
under systemd-boot. So a system needs only bootkit's unit, and one that also
ships systemd-bless-boot gets a drop-in that tells it where the ESP is.

bootkit-finalize-staged.service finalizes a staged deployment when it stops, at
shutdown, and bootkit-finalize-failed.service fails at the next boot when that
did not work. Both need $BOOT mounted; a drop-in names its mount point.
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
FINALIZE_UNIT = "bootkit-finalize-staged.service"
FINALIZE_FAILED_UNIT = "bootkit-finalize-failed.service"
FINALIZE_WANTED_BY = "multi-user.target.wants"
BOOT_DROPIN = "50-bootkit-boot.conf"


def bless_boot_dropin(boot_dir: str) -> str:
    # systemd-bless-boot looks for the ESP at /efi, /boot and /boot/efi of the
    # running system; in a deployment, $BOOT is below the physical root instead.
    esp = f"{PHYSICAL_ROOT}{boot_dir}"
    return (
        "# Installed by bootkit: inside a deployment the ESP is mounted below the\n"
        "# physical root, where systemd-bless-boot does not look by itself.\n"
        "[Unit]\n"
        "# With the ESP mounted read-only, bootkit-mark-good.service renames the entry\n"
        "# instead, from a mount namespace of its own where the ESP is writable.\n"
        f"ConditionPathIsReadWrite={esp.replace('%', '%%')}\n"
        "\n"
        "[Service]\n"
        f"Environment={_systemd_quoted(f'SYSTEMD_ESP_PATH={esp}')}\n"
    )


def boot_mount_dropin(boot_dir: str) -> str:
    # $BOOT is written while finalizing at shutdown: it must stay mounted until then.
    return (
        "# Installed by bootkit: $BOOT, mounted below the physical root, is written\n"
        "# while a staged deployment is finalized.\n"
        "[Unit]\n"
        f"RequiresMountsFor={_systemd_quoted(f'{PHYSICAL_ROOT}{boot_dir}')}\n"
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
    # The finalize units, each with its enablement and its $BOOT drop-in.
    finalize: tuple[tuple[Path, Path, Path], ...] = ()


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
        finalize = tuple(_install_finalize_unit(tree, unit, boot_dir.rstrip("/"))
                         for unit in (FINALIZE_UNIT, FINALIZE_FAILED_UNIT))
    except OSError as err:
        raise BootkitError(
            f"cannot install the units under {unit_dir}: {err.strerror or err}",
            hint="run it as the owner of the tree (root for /)",
        ) from None
    return Installed(unit_dir / MARK_GOOD_UNIT, enabled, dropin, finalize)


def _install_finalize_unit(tree: Tree, unit: str, boot_dir: str) -> tuple[Path, Path, Path]:
    unit_dir = tree.make_dirs(UNIT_DIR)
    wants = tree.make_dirs(UNIT_DIR / FINALIZE_WANTED_BY)
    dropins = tree.make_dirs(UNIT_DIR / f"{unit}.d")
    with resources.as_file(resources.files("bootkit").joinpath("data", unit)) as src:
        atomic_copy(src, unit_dir / unit)
    atomic_symlink(f"../{unit}", wants / unit)
    atomic_write(dropins / BOOT_DROPIN, boot_mount_dropin(boot_dir))
    return unit_dir / unit, wants / unit, dropins / BOOT_DROPIN
