"""The one table every benchmark prints: a row per measurement, bootkit and its
reference side by side, the target last."""

from __future__ import annotations

import os
from collections.abc import Sequence

Row = tuple[str, str, str, str]


def print_table(rows: Sequence[Row], reference: str, note: str) -> None:
    """`note` says what the runs were (e.g. "best of 3 runs"); the load average at the
    end is printed with it, since a busy machine makes every figure worse."""
    header = ("", "bootkit", reference, "target")
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(4)]
    print(f"{note}; load average at the end: {os.getloadavg()[0]:.1f}")
    for row in [header, tuple("-" * w for w in widths), *rows]:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())
