"""fsck of the content store: every object against the digest its name stands for, and
the deployment files that share one.

An object's name is a digest of its content and metadata (see `store.object_key`; older objects keep the names older versions gave them),
so it is checked by computing that digest again from what is on disk. A deployment
file hardlinked to an object *is* that object: a write into it, or a chmod, changes
the file in every deployment that shares it. That is what this finds, naming each
file that shares the changed object.

Repairs: a changed object leaves the store, so no new deployment links to it (the
deployments keep their files as they are now: deploying their source again
restores them); objects no deployment uses are pruned; a file outside usr/ that is
a stored object (a write to it would reach usr/ of every deployment) gets a
private copy.

The digest covers owner and extended attributes, so run it as root, as bootkit is
run: without root the store could not give an object its owner. An SELinux label
the filesystem gave a new object is not held against it.
"""

from __future__ import annotations

import os
import re
import shutil
import stat
from collections.abc import Iterator, Sequence
from pathlib import Path

from bootkit.base.files import temp_name
from bootkit.base.xattrs import read_xattrs
from bootkit.sysroot.fsck.findings import Kind, Report
from bootkit.sysroot.fsck.records import rel
from bootkit.sysroot.fsck.trees import ContentHashes
from bootkit.sysroot.layout import Sysroot
from bootkit.sysroot.store import FileMeta, apply_meta, dedup_eligible, key_matches

_SUBDIR = re.compile(r"[0-9a-f]{2}")
_REST = re.compile(r"[0-9a-f]{62}")
_AUTOMATIC_XATTRS = ("security.selinux",)

Inode = tuple[int, int]


def check_store(
    sr: Sysroot, report: Report, trees: Sequence[tuple[str, Path]], hashes: ContentHashes
) -> None:
    """The objects, then the files of `trees` (ref, tree) that share them."""
    objects, changed = _check_objects(sr, report, hashes)
    sharing: dict[Path, list[str]] = {obj: [] for obj in changed}
    for ref, rel_path, path, obj in _shared_files(trees, objects):
        if obj in sharing:
            sharing[obj].append(f"{ref}:{rel_path}")
        if not dedup_eligible(rel_path):
            problem = report.add(
                Kind.SHARED_OUTSIDE_USR, f"{ref}:{rel_path}",
                "is a stored object: a write to it changes that file in every deployment",
            )
            if report.repair:
                _make_private(path)
                problem.repaired = "given a copy of its own"
    for obj, files in sharing.items():
        problem = report.add(
            Kind.OBJECT, rel(sr, obj),
            "content or metadata changed since it was stored"
            + (f"; shared by {', '.join(files)}" if files else ""),
        )
        if report.repair:
            obj.unlink()
            problem.repaired = "taken out of the store, so that no new deployment shares it"
            if files:
                problem.hint = "deploy the source of those deployments again to restore the file"
    if report.repair and any(p.kind is Kind.UNUSED_OBJECTS for p in report.problems):
        sr.objects.prune()
        for p in report.problems:
            if p.kind is Kind.UNUSED_OBJECTS:
                p.repaired = "removed"


def _check_objects(
    sr: Sysroot, report: Report, hashes: ContentHashes
) -> tuple[dict[Inode, Path], list[Path]]:
    """Every object by inode, and those whose content or metadata no longer match their name."""
    root = sr.objects.root
    objects: dict[Inode, Path] = {}
    changed: list[Path] = []
    unused = 0
    for sub in sorted(root.iterdir()) if root.is_dir() else []:
        if sub.name == "tmp" or sub.name == "prune-pending":
            continue
        if not _SUBDIR.fullmatch(sub.name) or not sub.is_dir() or sub.is_symlink():
            report.add(Kind.UNEXPLAINED, rel(sr, sub), "not part of the store")
            continue
        for obj in sorted(sub.iterdir()):
            st = obj.lstat()
            if not _REST.fullmatch(obj.name) or not stat.S_ISREG(st.st_mode):
                report.add(Kind.UNEXPLAINED, rel(sr, obj), "not a stored object")
            elif st.st_nlink == 1:
                unused += 1
            else:
                objects[st.st_dev, st.st_ino] = obj
                if not _matches_name(obj, st, hashes.of(obj, st)):
                    changed.append(obj)
    report.checked["objects"] = len(objects) + unused
    if unused:
        report.add(Kind.UNUSED_OBJECTS, rel(sr, root),
                   f"{unused} stored object(s) that no deployment uses")
    return objects, changed


def _matches_name(obj: Path, st: os.stat_result, digest: str) -> bool:
    xattrs = read_xattrs(obj)
    given = tuple(x for x in xattrs if x[0] not in _AUTOMATIC_XATTRS)
    key = obj.parent.name + obj.name
    return any(
        key_matches(key, digest, FileMeta(st.st_mode, st.st_uid, st.st_gid, candidate, 0.0))
        for candidate in dict.fromkeys((xattrs, given))
    )


def _shared_files(
    trees: Sequence[tuple[str, Path]], objects: dict[Inode, Path]
) -> Iterator[tuple[str, str, Path, Path]]:
    """(ref, path in the tree, path, object) of every file of `trees` that is an object."""
    for ref, tree in trees:
        for parent, _dirs, files in os.walk(tree):  # symlinks are not followed
            for name in files:
                path = os.path.join(parent, name)
                st = os.lstat(path)
                if not stat.S_ISREG(st.st_mode) or st.st_nlink < 2:
                    continue
                obj = objects.get((st.st_dev, st.st_ino))
                if obj is not None:
                    yield ref, os.path.relpath(path, tree), Path(path), obj


def _make_private(path: Path) -> None:
    """Replace `path` by a copy of its own, with the same content and metadata."""
    st = path.lstat()
    meta = FileMeta(st.st_mode, st.st_uid, st.st_gid, read_xattrs(path), st.st_mtime)
    tmp = temp_name(path)
    shutil.copyfile(path, tmp, follow_symlinks=False)
    apply_meta(tmp, meta)
    os.rename(tmp, path)
