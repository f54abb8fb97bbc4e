"""Reading a deployment's /etc as a tree, and what the admin changed in it.

A deployment keeps its OS's pristine defaults in `usr/etc` and its live, writable
configuration in `etc`. The admin's changes are the difference between the two:
every path added, deleted or modified, with what differs for a modification
(content, symlink target, mode, owner, extended attributes, or the kind of object).
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from bootkit.base.filetypes import FileType
from bootkit.base.seen import entry_path, open_file, open_seen
from bootkit.base.xattrs import Xattrs, read_xattrs
from bootkit.errors import BootkitError

ChangeKind = Literal["added", "modified", "deleted"]

# Labels that a security policy (SELinux, IMA/EVM) assigns by itself and that may
# legitimately differ between usr/etc and etc; they are copied, but a difference in
# them alone is not something the admin changed.
_POLICY_XATTRS = frozenset({"security.selinux", "security.ima", "security.evm"})

_CHUNK = 1 << 16


@dataclass(frozen=True)
class Node:
    """One filesystem object as the merge sees it (the object itself, symlinks not followed)."""

    path: Path
    type: FileType
    mode: int  # permission bits, including setuid/setgid/sticky
    uid: int
    gid: int
    size: int
    target: str | None  # symlink target
    rdev: int  # device number of device nodes
    xattrs: Xattrs
    dev_ino: tuple[int, int]
    times_ns: tuple[int, int]

    @property
    def is_dir(self) -> bool:
        return self.type is FileType.DIR


@dataclass(frozen=True)
class EtcChange:
    """One path whose live state differs from the defaults.

    `type` is the kind of object in the live /etc (for a deletion: in the defaults);
    `changed` says what differs for a modification: any of "type", "content",
    "target", "device", "mode", "owner", "xattrs".
    """

    path: str  # relative to /etc, e.g. "ssh/sshd_config"
    kind: ChangeKind
    type: FileType
    changed: tuple[str, ...] = field(default=())

    @property
    def letter(self) -> str:
        return {"added": "A", "modified": "M", "deleted": "D"}[self.kind]

    def to_json(self) -> dict[str, object]:
        return {
            "path": self.path,
            "kind": self.kind,
            "type": str(self.type),
            "changed": list(self.changed),
        }


# --- reading trees ---------------------------------------------------------------


def _node(path: Path, st: os.stat_result, target: str | None, xattrs: Xattrs) -> Node:
    kind = FileType.of_mode(st.st_mode)
    return Node(
        path=path,
        type=kind,
        mode=stat.S_IMODE(st.st_mode),
        uid=st.st_uid,
        gid=st.st_gid,
        size=st.st_size,
        target=target,
        rdev=st.st_rdev if kind.special else 0,
        xattrs=xattrs,
        dev_ino=(st.st_dev, st.st_ino),
        times_ns=(st.st_atime_ns, st.st_mtime_ns),
    )


def read_node(path: Path) -> Node:
    st = os.lstat(path)
    target = os.readlink(path) if stat.S_ISLNK(st.st_mode) else None
    return _node(path, st, target, read_xattrs(path))


def _listing(root: Path, seen: os.stat_result) -> list[tuple[str, os.stat_result, Node]]:
    """The objects in directory `root`, read through a descriptor of the directory the
    walk saw: a live /etc may change meanwhile, and a directory swapped for a symlink
    must not lead the walk (and the copies made of what it finds) out of it."""
    with open_seen(str(root), seen) as fd:
        found = []
        for name in sorted(os.listdir(fd)):
            st = os.stat(name, dir_fd=fd, follow_symlinks=False)
            target = os.readlink(name, dir_fd=fd) if stat.S_ISLNK(st.st_mode) else None
            xattrs = read_xattrs(entry_path(fd, name))
            found.append((name, st, _node(root / name, st, target, xattrs)))
        return found


def _walk(root: Path, seen: os.stat_result, prefix: str = "") -> Iterator[tuple[str, Node]]:
    for name, st, node in _listing(root, seen):
        rel = f"{prefix}{name}"
        yield rel, node
        if node.is_dir:
            yield from _walk(root / name, st, f"{rel}/")


def read_tree(root: Path) -> dict[str, Node]:
    """Every object under `root` by its path relative to `root` (not `root` itself)."""
    if not root.is_dir() or root.is_symlink():
        raise BootkitError(f"{root} is not a directory", hint="expected an /etc tree")
    return dict(_walk(root, os.lstat(root)))


def path_order(rel: str) -> list[str]:
    # Parents before children, and a directory's content right after it.
    return rel.split("/")


# --- comparing -------------------------------------------------------------------


def _same_content(a: Node, b: Node) -> bool:
    # Read from the inodes that were walked: a live /etc may change meanwhile.
    with open_file(a.path, a.dev_ino) as fa, open_file(b.path, b.dev_ino) as fb:
        offset = 0
        while True:
            block_a = os.pread(fa, _CHUNK, offset)
            block_b = os.pread(fb, _CHUNK, offset)
            if block_a != block_b:
                return False
            if not block_a:
                return True
            offset += len(block_a)


def _admin_xattrs(node: Node) -> Xattrs:
    return tuple(item for item in node.xattrs if item[0] not in _POLICY_XATTRS)


def differences(default: Node, live: Node) -> tuple[str, ...]:
    """What differs between a default and its live counterpart; empty when unchanged."""
    if default.type != live.type:
        return ("type",)
    found: list[str] = []
    if default.type is FileType.FILE and default.dev_ino != live.dev_ino:
        if default.size != live.size or not _same_content(default, live):
            found.append("content")
    elif default.type is FileType.SYMLINK and default.target != live.target:
        found.append("target")
    elif default.type.special and default.rdev != live.rdev:
        found.append("device")
    # Linux symlinks have no mode of their own; it is always 0777.
    if default.type is not FileType.SYMLINK and default.mode != live.mode:
        found.append("mode")
    if (default.uid, default.gid) != (live.uid, live.gid):
        found.append("owner")
    if _admin_xattrs(default) != _admin_xattrs(live):
        found.append("xattrs")
    return tuple(found)


def changes_between(defaults: dict[str, Node], live: dict[str, Node]) -> list[EtcChange]:
    found = []
    for rel in sorted(defaults.keys() | live.keys(), key=path_order):
        default, current = defaults.get(rel), live.get(rel)
        if default is None:
            assert current is not None
            found.append(EtcChange(rel, "added", current.type))
        elif current is None:
            found.append(EtcChange(rel, "deleted", default.type))
        elif changed := differences(default, current):
            found.append(EtcChange(rel, "modified", current.type, changed))
    return found


def etc_changes(defaults: Path, live: Path) -> list[EtcChange]:
    """The admin's changes: every path where `live` differs from `defaults`.

    Listed parents first (a directory before its content); inside an added or deleted
    directory every object is listed as added or deleted too.
    """
    return changes_between(read_tree(defaults), read_tree(live))

