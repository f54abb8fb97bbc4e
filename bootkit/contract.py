"""What bootkit's Python code and its shell scripts must agree on, written once.

The initramfs hook (`bootkit-prepare-root`), bootkit's busybox `/init`, the
`bootkit-mark-good` script and the GRUB files all speak these values; the tests
check each script against this module, so a change here that a script does not
follow fails the suite.
"""

from __future__ import annotations

import re
from pathlib import Path

from bootkit.errors import BootkitError

# Stateroots (`<os>`) and deployments (`<id>`).
NAME_PATTERN = r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}"
NAME_MAX = 64
_NAME_RE = re.compile(rf"\A{NAME_PATTERN}\Z")

# Where the initramfs hook leaves the physical root, read-only, inside a deployment.
PHYSICAL_ROOT = "/sysroot"
# Where deployments live on the physical root, as `bootkit=` names them.
DEPLOY_ROOT = "/bootkit/deploy"
# The kernel argument that names the deployment to boot.
BOOTKIT_ARG = "bootkit"
_BOOTKIT_ARG_RE = re.compile(rf"(?:^|\s){BOOTKIT_ARG}=(\S+)")
# Where the kernel shows its command line; `booted_deployment` reads it.
PROC_CMDLINE = Path("/proc/cmdline")
# Where bootkit keeps what lasts only until the next boot: the record of a staged
# deployment (`staged.json`), which a reboot without finalizing must forget.
RUN_DIR = Path("/run/bootkit")

# GRUB's boot counter, in bootkit's grubenv on $BOOT: the deployment path it
# counts, and the tries left (no tries variable: marked good).
GRUBENV = "/bootkit/grub/grubenv"
GRUB_COUNTED_VAR = "bootkit_counted"
GRUB_TRIES_VAR = "bootkit_tries"


def is_valid_name(name: str) -> bool:
    return bool(_NAME_RE.match(name)) and name not in (".", "..")


# $BOOT/bootkit/<os>/ holds an OS's kernels, and $BOOT/bootkit/grub/ bootkit's GRUB
# menu and grubenv: an OS may not take that name.
RESERVED_OS_NAMES = frozenset({"grub"})


def check_name(name: str, what: str) -> str:
    """Return `name` unchanged, or refuse it with a message naming the rule."""
    if not is_valid_name(name):
        raise BootkitError(
            f"invalid {what} name {name!r}",
            hint="use 1-64 characters from A-Z a-z 0-9 . _ -, starting with a letter or digit",
        )
    if what == "os" and name in RESERVED_OS_NAMES:
        raise BootkitError(
            f"the os name {name!r} is taken by bootkit's own files on $BOOT",
            hint="choose another name for the stateroot",
        )
    return name


def deployment_path(os_name: str, dep_id: str) -> str:
    """A deployment's path on the physical root, the value of `bootkit=`."""
    return f"{DEPLOY_ROOT}/{os_name}/deploy/{dep_id}"


def stateroot_var_path(os_name: str) -> str:
    """The /var that every deployment of `os_name` shares."""
    return f"{DEPLOY_ROOT}/{os_name}/var"


def bootkit_arg(cmdline: str) -> str | None:
    """The value of `bootkit=` in a kernel command line or an entry's options."""
    m = _BOOTKIT_ARG_RE.search(cmdline)
    return m.group(1) if m else None


def booted_deployment() -> str | None:
    """The `bootkit=` path of the running system, or None outside a deployment."""
    try:
        return bootkit_arg(PROC_CMDLINE.read_text())
    except OSError:
        return None
