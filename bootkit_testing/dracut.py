"""dracut with bootkit's module, without installing anything on the host.

The tests and benchmarks/initramfs.py run the host's dracut with
`dracutbasedir=<copy>`: a copy of dracut's base directory made of symlinks,
whose modules.d also holds 90bootkit. The host's /usr/lib/dracut stays untouched.
"""

from __future__ import annotations

from pathlib import Path

from bootkit.initramfs.dracut import MODULE_NAME, install_dracut_module

DRACUT_BASE = Path("/usr/lib/dracut")


def dracut_base_with_bootkit(base: Path) -> Path:
    """A copy of dracut's base directory (symlinks) at `base` whose modules.d also holds
    90bootkit: dracut runs with `dracutbasedir=base`."""
    (base / "modules.d").mkdir(parents=True)
    for entry in DRACUT_BASE.iterdir():
        if entry.name != "modules.d":
            (base / entry.name).symlink_to(entry)
    for module in (DRACUT_BASE / "modules.d").iterdir():
        (base / "modules.d" / module.name).symlink_to(module)
    install_dracut_module(base / "modules.d" / MODULE_NAME)
    return base
