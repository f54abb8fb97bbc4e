"""How image commands tell their caller what they are doing: steps, and bytes imported."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from pathlib import Path

from bootkit.sysroot.importers import open_source

# One line per step ("Writing the ESP (FAT32, 256 MiB)").
Report = Callable[[str], None]
# Counts the bytes of a source as they are imported.
ByteCounter = Callable[[int], None]
# Given a source about to be imported and how to size it (the bytes it holds), a
# context yielding the counter for them (or None: nobody is counting). Sizing a
# directory walks all of it, so it is done only by a caller that shows the total.
ImportProgress = Callable[[Path, Callable[[], int]], AbstractContextManager[ByteCounter | None]]


def quiet(_: str) -> None:
    pass


def no_progress(_source: Path, _total: Callable[[], int]) -> AbstractContextManager[None]:
    return contextlib.nullcontext()


@contextlib.contextmanager
def importing(progress: ImportProgress, source: Path) -> Iterator[ByteCounter | None]:
    """The counter `progress` gives for importing `source`, sized from its content."""
    with progress(source, lambda: open_source(source).size()) as counter:
        yield counter
