"""Content hashes of a directory source's files, kept between imports of that source."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from bootkit.base.files import atomic_write


class HashCache:
    """Content hashes of a directory source's files, from the last import of that source.

    A file whose inode, size, mtime and ctime are unchanged keeps its hash, so that a
    redeploy of a big tree with a few changed files reads only those files. ctime
    cannot be set from user space, so a rewrite that restores the mtime is still
    seen. Entries changed too recently to be told apart from a change within the same
    clock tick are not kept.
    """

    RACY_NS = 2_000_000_000

    def __init__(self, path: Path, source: Path) -> None:
        self.path = path
        self.source = str(source.resolve())
        self.old: dict[str, list[int | str]] = {}
        self.new: dict[str, list[int | str]] = {}
        try:
            data = json.loads(path.read_text())
            if data.get("source") == self.source:
                self.old = data["files"]
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            pass  # no cache, or a damaged one: hash everything

    @staticmethod
    def _key(st: os.stat_result) -> list[int | str]:
        return [st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns]

    def get(self, rel: str, st: os.stat_result) -> str | None:
        entry = self.old.get(rel)
        if entry is not None and entry[:4] == self._key(st):
            self.new[rel] = entry
            return str(entry[4])
        return None

    def put(self, rel: str, st: os.stat_result, digest: str) -> None:
        self.new[rel] = [*self._key(st), digest]

    def save(self) -> None:
        limit = time.time_ns() - self.RACY_NS
        files = {rel: e for rel, e in self.new.items() if int(e[3]) < limit}
        atomic_write(self.path, json.dumps({"source": self.source, "files": files}))
