"""Changing boot state from inside a booted deployment.

There the physical root filesystem is mounted read-only at /sysroot (the
initramfs hook leaves it so), so that nothing on the running system writes into
other deployments or bootkit's records by accident. bootkit itself has to write
there. When a command starts a transaction, bootkit moves itself into a mount
namespace of its own and makes /sysroot writable in that namespace only: every
other process keeps seeing it read-only, and the writable mount disappears with
the bootkit process.

Only the mount's own read-only flag changes (a bind remount): the filesystem
underneath is already writable, because the deployment's /etc and the shared
/var live on it.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
from collections.abc import Iterator
from pathlib import Path

from bootkit.contract import PHYSICAL_ROOT, booted_deployment
from bootkit.errors import BootkitError
from bootkit.sysroot.layout import Sysroot

CLONE_NEWNS = 0x00020000
MS_RDONLY = 0x1
MS_NOSUID = 0x2
MS_NODEV = 0x4
MS_NOEXEC = 0x8
MS_REMOUNT = 0x20
MS_NOATIME = 0x400
MS_NODIRATIME = 0x800
MS_BIND = 0x1000
MS_REC = 0x4000
MS_SLAVE = 0x80000
MS_RELATIME = 0x200000

# A bind remount replaces all of the mount's own flags; these are carried over
# (statvfs reports them with values of its own).
_KEPT_FLAGS = (
    (os.ST_NOSUID, MS_NOSUID),
    (os.ST_NODEV, MS_NODEV),
    (os.ST_NOEXEC, MS_NOEXEC),
    (os.ST_NOATIME, MS_NOATIME),
    (os.ST_NODIRATIME, MS_NODIRATIME),
    (os.ST_RELATIME, MS_RELATIME),
)


def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(None, use_errno=True)


def _check(result: int, what: str) -> None:
    if result != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


def is_read_only(path: Path) -> bool:
    return bool(os.statvfs(path).f_flag & os.ST_RDONLY)


def enter_private_mount_namespace() -> None:
    """Give this process a copy of the mount table; changes to it stay here.

    Fails with EINVAL once the process runs threads (they would share the old one).
    """
    libc = _libc()
    _check(libc.unshare(CLONE_NEWNS), "unshare(CLONE_NEWNS)")
    # Slave rather than private: what the system mounts later (an automounted ESP)
    # still shows up here, while nothing mounted here leaves this namespace.
    _check(libc.mount(None, b"/", None, MS_REC | MS_SLAVE, None), "making / a slave mount")


def remount_bind(path: Path, read_only: bool) -> None:
    """Set or clear the read-only flag of the mount at `path`, keeping its other flags."""
    current = os.statvfs(path).f_flag
    flags = MS_REMOUNT | MS_BIND | (MS_RDONLY if read_only else 0)
    for st_flag, ms_flag in _KEPT_FLAGS:
        if current & st_flag:
            flags |= ms_flag
    _check(_libc().mount(None, os.fsencode(path), None, flags, None), f"remounting {path}")


def make_writable(path: Path) -> bool:
    """Make the read-only mount at `path` writable for this process only; True if it did."""
    if not is_read_only(path):
        return False
    if os.geteuid() != 0:
        raise BootkitError(
            f"{path} is mounted read-only",
            hint="run bootkit as root; it makes the sysroot writable for itself only",
        )
    try:
        enter_private_mount_namespace()
        remount_bind(path, read_only=False)
    except OSError as err:
        raise BootkitError(
            f"cannot make {path} writable for bootkit: {err.strerror or err}",
            hint=f"is {path} a mount point? bootkit needs its own mount namespace (CAP_SYS_ADMIN)",
        ) from None
    if is_read_only(path):
        raise BootkitError(
            f"the filesystem holding {path} is read-only",
            hint="boot with 'rw' on the kernel command line (bootkit's entries carry it), "
            "or remount it read-write",
        )
    return True


def default_sysroot() -> Path:
    """`/`, except inside a booted deployment, where the physical root is at /sysroot."""
    physical = Path(PHYSICAL_ROOT)
    if booted_deployment() and (physical / "bootkit/config.json").is_file():
        return physical
    return Path("/")


def check_boot_mounted(sysroot: Sysroot) -> None:
    """Refuse to write kernels into the empty mount point when $BOOT is not mounted."""
    boot = sysroot.boot_path
    if os.path.ismount(boot) or (boot / "loader").is_dir() or (boot / "bootkit").is_dir():
        return
    raise BootkitError(
        f"$BOOT is not mounted at {boot}",
        hint=f"mount it there (for example with an /etc/fstab line for the ESP at {boot}) and retry",
    )


def prepare_for_changes(sysroot: Sysroot) -> bool:
    """Inside a booted deployment, make `sysroot` ready to be changed by this process.

    True if it had to be made writable. Outside a booted deployment nothing is done.
    """
    if booted_deployment() is None or not sysroot.meta.is_dir():
        return False  # not a sysroot: taking the lock says so
    changed = make_writable(sysroot.path)
    if sysroot.config_path.is_file():
        check_boot_mounted(sysroot)
    return changed


class BootedSysroot(Sysroot):
    """A sysroot that can be changed from inside a booted deployment.

    Reading it changes nothing; the first transaction (every change takes the lock)
    makes it writable for this process, as `prepare_for_changes` describes.
    """

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        prepare_for_changes(self)
        with super().locked():
            yield
