"""bootkit's dracut module, 90bootkit: installing it where dracut looks for modules.

With the module installed, `dracut --add bootkit` builds a systemd initramfs
that runs the bootkit-prepare-root hook after the physical root is mounted at
/sysroot, leaving the bootkit= deployment there before systemd switches root.
"""

from __future__ import annotations

from pathlib import Path

from bootkit.base.files import atomic_write
from bootkit.errors import BootkitError
from bootkit.initramfs.builder import data_file

MODULE_NAME = "90bootkit"
DRACUT_MODULE_DIR = Path("/usr/lib/dracut/modules.d") / MODULE_NAME
# File name -> mode; module-setup.sh is sourced by dracut, the hook is executed.
DRACUT_MODULE_FILES = {
    "module-setup.sh": 0o755,
    "bootkit-prepare-root.sh": 0o755,
    "bootkit-prepare-root.service": 0o644,
}


def install_dracut_module(dest: Path = DRACUT_MODULE_DIR) -> list[Path]:
    """Write the module's files into `dest` (created if missing); return the files written."""
    try:
        dest.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise BootkitError(f"cannot create {dest}: {err.strerror}") from err
    written: list[Path] = []
    for name, mode in DRACUT_MODULE_FILES.items():
        atomic_write(dest / name, data_file("dracut", MODULE_NAME, name), mode)
        written.append(dest / name)
    return written
