"""Content hashes of a directory source's files, kept between imports of that source."""

from __future__ import annotations

import itertools
import json
import os
import re
import time
from array import array
from collections.abc import Iterator
from pathlib import Path

from bootkit.base.files import atomic_write_chunks


class HashCache:
    """Content hashes of a directory source's files, from the last import of that source.

    A file whose device, inode, size, mtime and ctime are unchanged keeps its hash, so
    that a redeploy of a big tree with a few changed files reads only those files. The
    device is part of it: another filesystem mounted in the tree's place reuses inode
    numbers. ctime cannot be set from user space, so a rewrite that restores the mtime
    is still seen. Entries changed too recently to be told apart from a change within
    the same clock tick are not kept.

    The file lists every path of the source, so only root may read it; an entry that
    is not what this class writes (a damaged or foreign file) is ignored.
    """

    RACY_NS = 2_000_000_000

    def __init__(self, path: Path, source: Path) -> None:
        self.path = path
        self.source = str(source.resolve())
        self.old: dict[str, Entry] = {}
        self.new = _Entries()
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError):
            return  # no cache, or a damaged one: hash everything
        if isinstance(data, dict) and data.get("source") == self.source:
            files = data.get("files")
            if isinstance(files, dict):
                self.old = {rel: e for rel, e in files.items() if _valid(e)}

    @staticmethod
    def _key(st: os.stat_result) -> list[int | str]:
        return [st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns]

    def get(self, rel: str, st: os.stat_result) -> str | None:
        """The hash of `rel` from the last import, if `st` says it is unchanged since;
        to be kept, it must be `put` again."""
        entry = self.old.get(rel)
        if entry is not None and entry[:_KEY] == self._key(st):
            return str(entry[_KEY])
        return None

    def put(self, rel: str, st: os.stat_result, digest: str) -> None:
        """Keep `digest` as the hash of `rel` with `st`; once for each path."""
        self.new.add(rel, [*self._key(st), digest])

    def save(self) -> None:
        limit = time.time_ns() - self.RACY_NS
        head = f'{{"source": {json.dumps(self.source)}, "files": {{'.encode()
        members = self.new.json_members(limit)
        atomic_write_chunks(self.path, itertools.chain([head], members, [b"}}"]), mode=0o600)


class _Entries:
    """The new entries, as the members of the JSON object they become: a source of a
    million files would take half a gigabyte as a dict of lists."""

    def __init__(self) -> None:
        self.text = bytearray()
        self.ends = array("Q")  # where each member's text ends
        self.ctimes = array("q")  # each entry's ctime, which says whether it is kept

    def add(self, rel: str, entry: Entry) -> None:
        self.text += f"{json.dumps(rel)}: {json.dumps(entry)}".encode()
        self.ends.append(len(self.text))
        self.ctimes.append(int(entry[_KEY - 1]))

    def json_members(self, ctime_limit: int) -> Iterator[bytes]:
        """The members of entries changed before `ctime_limit`, comma-separated, in
        slices of about a megabyte: entries changed later may yet change within the
        clock tick of their ctime, and are not kept."""
        out = bytearray()
        start = 0
        separator = b""
        with memoryview(self.text) as view:
            for end, ctime in zip(self.ends, self.ctimes, strict=True):
                if ctime < ctime_limit:
                    out += separator
                    out += view[start:end]
                    separator = b", "
                start = end
                if len(out) >= _SLICE:
                    yield bytes(out)
                    out.clear()
        yield bytes(out)


_SLICE = 1 << 20


# An entry: the stat fields of HashCache._key, then the content hash.
Entry = list[int | str]
_KEY = 5
_DIGEST = re.compile(r"[0-9a-f]{64}")


def _valid(entry: object) -> bool:
    return (
        isinstance(entry, list)
        and len(entry) == _KEY + 1
        and all(type(n) is int for n in entry[:_KEY])
        and isinstance(entry[_KEY], str)
        and _DIGEST.fullmatch(entry[_KEY]) is not None
    )
