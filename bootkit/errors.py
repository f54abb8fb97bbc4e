"""The one error type users see: what went wrong, and what to do next."""

from __future__ import annotations

import errno


class BootkitError(Exception):
    """A failure caused by input or machine state, not by a bug in bootkit.

    The CLI prints it as one line on stderr (plus the hint, if any) and exits
    non-zero; anything else that escapes is a bug and keeps its traceback.
    """

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.message if not self.hint else f"{self.message} ({self.hint})"


# What the machine refused, and what the user can do about it. Every command that
# changes boot state is a transaction, so the hints may promise that running the
# command again, once the cause is gone, finishes or undoes what was left.
_AGAIN = "then run the command again; it finishes or undoes what this one left"
_OS_HINTS: dict[int, tuple[str, str]] = {
    errno.ENOSPC: ("no space left on the filesystem", f"free some space ('bootkit cleanup' "
                   f"removes old deployments and kernels), {_AGAIN}"),
    errno.EDQUOT: ("disk quota exceeded", f"raise the quota or free some space, {_AGAIN}"),
    errno.EROFS: ("the filesystem is mounted read-only",
                  f"remount it read-write (or point bootkit at a writable sysroot), {_AGAIN}"),
    errno.ENAMETOOLONG: ("a file name is too long",
                         "names are limited to 255 bytes and paths to 4096; use shorter ones"),
    errno.EACCES: ("permission denied", "run bootkit as root"),
    errno.EPERM: ("operation not permitted", "run bootkit as root"),
    errno.EIO: ("input/output error", "the disk may be failing: check the kernel log (dmesg)"),
    errno.ELOOP: ("too many levels of symbolic links", "check the path for a symlink loop"),
    errno.EMLINK: ("too many links", "the filesystem cannot link one file that often"),
}


def from_os_error(err: OSError) -> BootkitError:
    """One line for an OSError that reached the command boundary: what, where, and a hint."""
    what, hint = _OS_HINTS.get(
        err.errno or 0, (err.strerror or str(err), f"check the path and the system log, {_AGAIN}")
    )
    where = [str(p) for p in (err.filename, err.filename2) if p is not None]
    return BootkitError(f"{what}: {' -> '.join(where)}" if where else what, hint=hint)
