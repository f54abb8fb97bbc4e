"""fsck of the deployments' trees: what a deployment keeps as imported (all but /etc,
/usr/etc and /var) against the digest recorded at deploy time.

A file changed in place, a file added or removed, a changed mode or owner: each
changes the digest. The digest says that a tree differs, not where; when a stored
object changed, the store check names the files that share it.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence

from bootkit.records.deployment import Deployment
from bootkit.sysroot.contentdigest import os_digest, tree_notes
from bootkit.sysroot.fsck.findings import Kind, Report
from bootkit.sysroot.layout import Sysroot


class ContentHashes:
    """Content hashes of files, by inode: a file shared by many deployments is read once."""

    def __init__(self) -> None:
        self._known: dict[tuple[int, int], str] = {}

    def of(self, path: str | os.PathLike[str], st: os.stat_result) -> str:
        key = (st.st_dev, st.st_ino)
        digest = self._known.get(key)
        if digest is None:
            with open(path, "rb") as f:
                digest = hashlib.file_digest(f, "sha256").hexdigest()
            self._known[key] = digest
        return digest


def check_trees(
    sr: Sysroot, report: Report, deps: Sequence[Deployment], hashes: ContentHashes
) -> None:
    """Each tree against its recorded digest (metadata older than it is not checked)."""
    for dep in deps:
        tree = sr.tree(dep)
        if not dep.os_digest or not tree.is_dir():
            continue
        if os_digest(tree_notes(tree, hashes.of)) != dep.os_digest:
            report.add(
                Kind.TREE, dep.ref,
                "its files differ from what was deployed (outside /etc and /var): changed, "
                "added or removed since",
                hint="deploy its source again for an unchanged copy",
            )
