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

$BOOT may be mounted read-only too (an fstab line with `ro`, as Fedora CoreOS
does for /boot). Then its filesystem itself is read-only, which a bind remount
cannot change: bootkit remounts the filesystem read-write in its namespace, where
only its own mount is writable (every other mount of it keeps its read-only flag),
and read-only again when the command is done, so that the filesystem is as clean
as before (a FAT's dirty bit cleared, a journal flushed) should the machine stop.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import logging
import os
import re
from collections.abc import Iterator
from pathlib import Path

from bootkit.contract import PHYSICAL_ROOT, booted_deployment
from bootkit.errors import BootkitError
from bootkit.sysroot.layout import Sysroot

log = logging.getLogger("bootkit")

CLONE_NEWNS = 0x00020000
MS_RDONLY = 0x1
MS_NOSUID = 0x2
MS_NODEV = 0x4
MS_NOEXEC = 0x8
MS_SYNCHRONOUS = 0x10
MS_REMOUNT = 0x20
MS_NOATIME = 0x400
MS_NODIRATIME = 0x800
MS_BIND = 0x1000
MS_REC = 0x4000
MS_SLAVE = 0x80000
MS_RELATIME = 0x200000
MS_LAZYTIME = 0x2000000

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


# A remount of the filesystem (not a bind remount) also sets these flags of the
# filesystem anew, as /proc/self/mountinfo names them among its options.
_FILESYSTEM_FLAGS = {"sync": MS_SYNCHRONOUS, "lazytime": MS_LAZYTIME}


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
    remount(path, read_only, bind=True)


def remount(path: Path, read_only: bool, bind: bool) -> None:
    """Remount the mount at `path` read-only or read-write, keeping its other flags.

    `bind` changes this mount's own read-only flag alone. Without it, the
    filesystem's read-only state changes too; other mounts of it that are
    flagged read-only themselves stay read-only. The filesystem's options (a
    FAT's umask, ext4's commit interval) stay as they are (seen with vfat, ext4
    and tmpfs: the kernel neither needs nor re-reads them on a remount), but
    for the generic `sync` and `lazytime`, which it would clear.
    """
    current = os.statvfs(path).f_flag
    flags = MS_REMOUNT | (MS_BIND if bind else 0) | (MS_RDONLY if read_only else 0)
    # Either remount replaces all of the mount's own flags (but the atime ones,
    # which the kernel keeps when none is given).
    for st_flag, ms_flag in _KEPT_FLAGS:
        if current & st_flag:
            flags |= ms_flag
    if not bind:
        options = filesystem_options(path)
        for option, ms_flag in _FILESYSTEM_FLAGS.items():
            if option in options:
                flags |= ms_flag
    _check(_libc().mount(None, os.fsencode(path), None, flags, None), f"remounting {path}")


def filesystem_options(mount: Path) -> list[str]:
    """The options of the filesystem mounted at `mount` (the topmost mount there)."""
    found: list[str] = []
    with open("/proc/self/mountinfo", encoding="utf-8", errors="surrogateescape") as lines:
        for line in lines:
            # ID PARENT DEV ROOT MOUNTPOINT OPTIONS [OPTIONAL...] - TYPE SOURCE SUPER-OPTIONS
            fields = line.split()
            point = re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), fields[4])
            if point == str(mount):
                found = fields[-1].split(",")
    return found


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


def mount_point(path: Path) -> Path:
    """Where the mount that holds `path` is mounted."""
    path = Path(os.path.realpath(path))
    while not os.path.ismount(path):
        path = path.parent
    return path


@contextlib.contextmanager
def writable_boot(sysroot: Sysroot) -> Iterator[None]:
    """Inside a booted deployment, let this process write $BOOT while the block runs.

    Nothing is done outside a booted deployment, before `bootkit init`, or when
    $BOOT can be written already. When its filesystem had to be made writable, it
    is made read-only again at the end, once no other bootkit process writes it.
    """
    boot = sysroot.boot_path if sysroot.config_path.is_file() else None
    if booted_deployment() is None or boot is None or not boot.is_dir() or not is_read_only(boot):
        yield
        return
    _require_root(boot)
    mount = mount_point(boot)
    fd = os.open(mount, os.O_RDONLY | os.O_DIRECTORY)
    try:
        # Each bootkit process holds this lock, shared, while it writes $BOOT:
        # mark-good takes no sysroot lock and may run beside a transaction, and the
        # filesystem must not turn read-only under its feet.
        fcntl.flock(fd, fcntl.LOCK_SH)
        changed_filesystem = _make_boot_writable(mount)
        try:
            yield
        finally:
            if changed_filesystem:
                _make_boot_read_only_again(mount, fd)
    finally:
        os.close(fd)


def _require_root(path: Path) -> None:
    if os.geteuid() != 0:
        raise BootkitError(
            f"{path} is mounted read-only",
            hint="run bootkit as root; it makes the mount writable for itself only",
        )


def _make_boot_writable(mount: Path) -> bool:
    """Make $BOOT's mount writable in a namespace of this process; True if its
    filesystem was read-only too and had to be remounted."""
    try:
        enter_private_mount_namespace()
    except OSError as err:
        raise BootkitError(
            f"cannot make $BOOT ({mount}) writable for bootkit: {err.strerror or err}",
            hint="bootkit needs a mount namespace of its own (root with CAP_SYS_ADMIN)",
        ) from None
    try:
        remount(mount, read_only=False, bind=True)
        if not is_read_only(mount):
            return False  # the filesystem was writable; only the host's mount is not
        remount(mount, read_only=False, bind=False)
    except OSError as err:
        raise BootkitError(
            f"cannot make $BOOT ({mount}) writable for bootkit: {err.strerror or err}",
            hint=_remount_hint(err, mount),
        ) from None
    return True


def _remount_hint(err: OSError, mount: Path) -> str:
    if err.errno == errno.EPERM:
        return ("bootkit needs CAP_SYS_ADMIN over that filesystem; in a container, "
                "mount it read-write from the host")
    if err.errno in (errno.EACCES, errno.EROFS):
        return (f"the device under {mount} is read-only itself (write-protected, or a "
                "read-only loop device); make it writable")
    return f"mount it read-write ('mount -o remount,rw {mount}') and retry"


def _make_boot_read_only_again(mount: Path, fd: int) -> None:
    """Set $BOOT's filesystem read-only again once no other bootkit process writes it.

    Waiting for the exclusive lock waits for every bootkit process that started
    writing $BOOT meanwhile: they found it writable and leave it to this one.
    """
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        remount(mount, read_only=True, bind=False)
    except OSError as err:
        # Every mount outside this process is still flagged read-only; only the
        # filesystem stays writable underneath until the next remount or reboot.
        log.warning("could not set %s read-only again: %s", mount, err.strerror or err)


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

    Reading it changes nothing; every transaction (every change takes the lock)
    makes it and $BOOT writable for this process, as `prepare_for_changes` and
    `writable_boot` describe.
    """

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        prepare_for_changes(self)
        with super().locked(), writable_boot(self):
            yield
