"""Names of stateroots (`<os>`) and deployments (`<id>`), validated one way everywhere."""

from __future__ import annotations

import re

from bootkit.errors import BootkitError

# The initramfs hook applies the same pattern; keep both in step.
NAME_PATTERN = r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}"
_NAME_RE = re.compile(rf"\A{NAME_PATTERN}\Z")


def is_valid_name(name: str) -> bool:
    return bool(_NAME_RE.match(name)) and name not in (".", "..")


def check_name(name: str, what: str) -> str:
    """Return `name` unchanged, or refuse it with a message naming the rule."""
    if not is_valid_name(name):
        raise BootkitError(
            f"invalid {what} name {name!r}",
            hint="use 1-64 characters from A-Z a-z 0-9 . _ -, starting with a letter or digit",
        )
    return name
