"""The UAPI Version Format comparison, as systemd-boot uses it to order boot entries.

This follows the algorithm of the UAPI "Version Format Specification" step by step,
so that `bootkit status` can predict systemd-boot's menu exactly.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import cmp_to_key
from typing import TypeVar

# Both sides of a comparison are of one kind: flags, lengths, or segments of text.
_Ordered = TypeVar("_Ordered", bool, int, str)

_SPECIAL = "~-^."


def _is_version_char(c: str) -> bool:
    return (c.isascii() and c.isalnum()) or c in _SPECIAL


def _cmp(x: _Ordered, y: _Ordered) -> int:
    return (x > y) - (x < y)


def _take(s: str, i: int, pred: Callable[[str], bool]) -> int:
    while i < len(s) and pred(s[i]):
        i += 1
    return i


def _digit(c: str) -> bool:
    return "0" <= c <= "9"


def _alpha(c: str) -> bool:
    return c.isascii() and c.isalpha()


def compare_versions(a: str, b: str) -> int:
    """Return -1, 0 or 1 as `a` is older than, equal to, or newer than `b`."""
    i = j = 0
    while True:
        i = _take(a, i, lambda c: not _is_version_char(c))
        j = _take(b, j, lambda c: not _is_version_char(c))
        ca, cb = a[i : i + 1], b[j : j + 1]

        # '~' marks a pre-release: older than anything, even the end of the string.
        if ca == "~" or cb == "~":
            if r := _cmp(ca != "~", cb != "~"):
                return r
            i, j = i + 1, j + 1
            ca, cb = a[i : i + 1], b[j : j + 1]

        # Past '~', a string with more segments is newer.
        if not ca or not cb:
            rest_a, rest_b = a[i:], b[j:]
            return _cmp(rest_a, rest_b)

        for sep in "-^.":
            if ca == sep or cb == sep:
                if r := _cmp(ca != sep, cb != sep):
                    return r
                i, j = i + 1, j + 1
                ca, cb = a[i : i + 1], b[j : j + 1]

        if _digit(ca) or _digit(cb):
            ea, eb = _take(a, i, _digit), _take(b, j, _digit)
            # A numeric segment is newer than an alphabetic one.
            if r := _cmp(ea != i, eb != j):
                return r
            i, j = _take(a, i, lambda c: c == "0"), _take(b, j, lambda c: c == "0")
            i, j = min(i, ea), min(j, eb)
            if r := _cmp(ea - i, eb - j):
                return r
            if r := _cmp(a[i:ea], b[j:eb]):
                return r
        else:
            ea, eb = _take(a, i, _alpha), _take(b, j, _alpha)
            n = min(ea - i, eb - j)
            if r := _cmp(a[i : i + n], b[j : j + n]):
                return r
            if r := _cmp(ea - i, eb - j):
                return r
        i, j = ea, eb


version_key = cmp_to_key(compare_versions)
