"""Tar headers read with bounds: what Python's tarfile reads of a member's headers
into memory, it reads whole.

A pax extended header or a GNU long name declares its own size, and tarfile reads
that many bytes at once: a small compressed archive can declare gigabytes of it.
Headers can also be chained (a pax header before a long name before a long link
...), each step one more level of recursion, and an old GNU sparse member can
carry any number of extension blocks. Here, all the headers that make up one
member together may take at most `HEADER_LIMIT` bytes and `CHAIN_LIMIT` steps, and
the global pax headers that apply to every later member at most `HEADER_LIMIT`
bytes; a member over any of them is refused by name.
"""

from __future__ import annotations

import tarfile
from typing import Any

from bootkit.errors import BootkitError

HEADER_LIMIT = 1 << 20
# Each of pax, global pax, GNU long name and long link, a few times over.
CHAIN_LIMIT = 16
_HINT = "the archive may be malicious; no tree needs headers that large"


class _Budget:
    """The archive's stream while one member's headers are read: counts what is read."""

    def __init__(self, stream: Any, member: tarfile.TarInfo) -> None:
        self.stream = stream
        self.member = member
        self.left = HEADER_LIMIT
        self.steps = 0

    @property
    def name(self) -> str:
        """The member, for a message: made only then, as there is a budget per member."""
        return f"{self.member.name!r} at byte {self.member.offset}"

    def read(self, size: int = -1) -> bytes:
        if size < 0 or size > self.left:
            raise BootkitError(
                f"tar member {self.name} has headers of more than {HEADER_LIMIT >> 20} MiB",
                hint=_HINT,
            )
        self.left -= size
        data: bytes = self.stream.read(size)
        return data

    def __getattr__(self, attr: str) -> Any:
        return getattr(self.stream, attr)


class BoundedTarInfo(tarfile.TarInfo):
    """A TarInfo whose header processing keeps to the limits above."""

    def _proc_member(self, tf: tarfile.TarFile) -> tarfile.TarInfo:
        budget = tf.fileobj
        if not isinstance(budget, _Budget):
            # The first header of a member: the budget covers every header chained to it.
            tf.fileobj = _Budget(budget, self)
            try:
                return self._proc_member(tf)
            finally:
                tf.fileobj = budget
        budget.steps += 1
        if budget.steps > CHAIN_LIMIT:
            raise BootkitError(
                f"tar member {budget.name} has more than {CHAIN_LIMIT} chained headers",
                hint=_HINT,
            )
        member: tarfile.TarInfo = super()._proc_member(tf)  # type: ignore[misc]
        if self.type == tarfile.XGLTYPE:
            _check_global(tf, budget.name)
        return member


def _check_global(tf: tarfile.TarFile, name: str) -> None:
    """Global headers add up over the archive: one after another may each bring new keys."""
    size = sum(len(k) + len(v) for k, v in tf.pax_headers.items())
    if size > HEADER_LIMIT:
        raise BootkitError(
            f"tar member {name} brings the archive's global headers to more than "
            f"{HEADER_LIMIT >> 20} MiB",
            hint=_HINT,
        )
