"""Content hashes of a directory source's files, kept between imports of that source."""

from __future__ import annotations

import json
import os
import re
import time
from pathlib import Path

from bootkit.base.files import atomic_write


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
        self.new: dict[str, Entry] = {}
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
        entry = self.old.get(rel)
        if entry is not None and entry[:_KEY] == self._key(st):
            self.new[rel] = entry
            return str(entry[_KEY])
        return None

    def put(self, rel: str, st: os.stat_result, digest: str) -> None:
        self.new[rel] = [*self._key(st), digest]

    def save(self) -> None:
        limit = time.time_ns() - self.RACY_NS
        files = {rel: e for rel, e in self.new.items() if int(e[_KEY - 1]) < limit}
        atomic_write(self.path, json.dumps({"source": self.source, "files": files}), mode=0o600)


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
