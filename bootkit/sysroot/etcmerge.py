"""Building a deployment's /etc: carrying the admin's changes to a new one.

A deployment keeps its OS's pristine defaults in `usr/etc` and its live, writable
configuration in `etc`; the admin's changes are the difference between the two (see
`etctree`). On deploy, the new deployment's `etc` is its own defaults with the current
deployment's changes laid on top (the three-way merge):

- a file or symlink the admin added or modified wins over the new defaults;
- a path the admin deleted stays deleted, even if the new defaults still ship it;
- a default the admin never touched comes from the new defaults, changed or not;
- modes, owners, symlink targets and extended attributes travel with each change;
- where the admin and the new defaults both changed what kind of thing a path is
  (a file against a directory, a symlink against a directory), nothing sensible can
  be chosen for the admin, so the merge stops with an error naming the path.

Everything here works on plain directory paths and writes only into a destination
directory it creates itself. Nothing is fsynced file by file: the caller builds the
whole deployment, syncs the filesystem once, and discards the destination on failure.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from bootkit.base.confined import Tree
from bootkit.base.files import remove_path
from bootkit.base.filetypes import FileType
from bootkit.base.seen import CREATE_FLAGS, copy_fd, open_file
from bootkit.base.xattrs import write_xattrs
from bootkit.errors import BootkitError
from bootkit.sysroot.etctree import (
    EtcChange,
    Node,
    changes_between,
    differences,
    path_order,
    read_node,
    read_tree,
)

# --- writing ---------------------------------------------------------------------


def _set_metadata(path: Path | int, node: Node) -> None:
    """Give `path` (or an open descriptor) the metadata of `node`, never through a symlink.

    Owner first (chown clears setuid/setgid), mode last (an ACL xattr rewrites the
    group bits), times at the very end.
    """
    fd = isinstance(path, int)
    if os.geteuid() == 0:
        os.chown(path, node.uid, node.gid, follow_symlinks=fd)
    write_xattrs(path, node.xattrs)
    if node.type is not FileType.SYMLINK:
        os.chmod(path, node.mode, follow_symlinks=fd)
    os.utime(path, ns=node.times_ns, follow_symlinks=fd)


def _copy_file(path: Path, node: Node) -> None:
    """Make `path` a copy of the regular file `node`, read from the very inode that was
    walked (a live /etc may change meanwhile) and given its metadata through its own
    descriptor."""
    with open_file(node.path, node.dev_ino) as src:
        fd = os.open(path, CREATE_FLAGS, 0o600)
        try:
            copy_fd(src, fd)
            _set_metadata(fd, node)
        finally:
            os.close(fd)


def _create(path: Path, node: Node) -> None:
    """Make a copy of `node` at `path` (which must not exist); directories get no content.

    A directory is created private and gets its metadata later, once its content is
    in place (a read-only mode would stop that content, and writing it bumps mtime).
    """
    if node.type is FileType.DIR:
        os.mkdir(path, 0o700)
        return
    if node.type is FileType.FILE:
        _copy_file(path, node)
        return
    if node.type is FileType.SYMLINK:
        assert node.target is not None
        os.symlink(node.target, path)
    else:
        os.mknod(path, node.type.format_bits | 0o600, node.rdev)
    _set_metadata(path, node)


class _Builder:
    """Builds a new /etc in a fresh directory, never writing outside it.

    Paths are resolved one component at a time with lstat, so a symlink in the new
    tree never leads a write or a removal out of the destination.
    """

    def __init__(self, dest: Path) -> None:
        self.dest = dest
        self.dir_metadata: dict[str, Node] = {}

    def lookup(self, rel: str) -> Node | None:
        """The object at `rel` in the destination, or None when it or a parent is missing
        or a parent is not a real directory."""
        current = self.dest
        parts = rel.split("/")
        for part in parts[:-1]:
            current = current / part
            try:
                if not stat.S_ISDIR(os.lstat(current).st_mode):
                    return None
            except FileNotFoundError:
                return None
        try:
            return read_node(current / parts[-1])
        except FileNotFoundError:
            return None

    def place(self, rel: str, node: Node) -> None:
        _create(self.dest / rel, node)
        if node.is_dir:
            self.dir_metadata[rel] = node

    def remove(self, rel: str) -> None:
        remove_path(self.dest / rel)
        for key in [k for k in self.dir_metadata if k == rel or k.startswith(f"{rel}/")]:
            del self.dir_metadata[key]

    def finish(self) -> None:
        # Deepest first, so setting a directory's times is the last touch on it.
        for rel in sorted(self.dir_metadata, key=lambda r: r.count("/"), reverse=True):
            _set_metadata(self.dest / rel, self.dir_metadata[rel])
        self.dir_metadata.clear()


def _conflict(rel: str, local: Node, new: Node) -> BootkitError:
    return BootkitError(
        f"cannot merge /etc/{rel}: it is a {local.type} in the current configuration "
        f"but a {new.type} in the new defaults",
        hint=f"move /etc/{rel} aside or restore it to the default, then deploy again; "
        "the current configuration was not changed",
    )


def _copy_tree(nodes: dict[str, Node], builder: _Builder) -> None:
    for rel in sorted(nodes, key=path_order):
        builder.place(rel, nodes[rel])


def _start(dest: Path, defaults: Path) -> _Builder:
    if os.path.lexists(dest):
        raise BootkitError(
            f"{dest} already exists", hint="the new /etc is built in a fresh directory"
        )
    builder = _Builder(dest)
    os.mkdir(dest, 0o700)
    builder.dir_metadata[""] = read_node(defaults)
    return builder


def copy_etc(defaults: Path, dest: Path) -> None:
    """A first deployment's /etc: a faithful copy of its defaults at `dest` (created)."""
    nodes = read_tree(defaults)
    builder = _start(dest, defaults)
    _copy_tree(nodes, builder)
    builder.finish()


def merge_etc(
    old_defaults: Path | None, old_live: Path | None, new_defaults: Path, dest: Path
) -> list[EtcChange]:
    """Build the new deployment's /etc at `dest` (created; must not exist).

    `dest` = `new_defaults` plus the changes that `old_live` carries relative to
    `old_defaults`. Without an old deployment (both None) it is a copy of
    `new_defaults`. Returns the local changes that were applied. On a conflict raises
    BootkitError naming the path; `dest` is then half-built and the caller discards it.
    """
    if (old_defaults is None) != (old_live is None):
        raise ValueError("old_defaults and old_live go together")
    old = read_tree(old_defaults) if old_defaults is not None else {}
    live = read_tree(old_live) if old_live is not None else {}
    new = read_tree(new_defaults)
    changes = changes_between(old, live)

    builder = _start(dest, new_defaults)
    _copy_tree(new, builder)
    for change in changes:
        if change.kind == "deleted":
            if builder.lookup(change.path) is not None:
                builder.remove(change.path)
        else:
            _carry(change.path, old.get(change.path), live, builder)
    if old_live is not None and old_defaults is not None:
        root_changed = differences(read_node(old_defaults), read_node(old_live))
        if root_changed:
            builder.dir_metadata[""] = read_node(old_live)
    builder.finish()
    return changes


def _carry(rel: str, old: Node | None, live: dict[str, Node], builder: _Builder) -> None:
    """Lay the admin's added or modified object at `rel` over the new defaults."""
    local = live[rel]
    parent, _, _ = rel.rpartition("/")
    if parent:
        _ensure_dir(parent, live, builder)
    new = builder.lookup(rel)
    if new is None:
        builder.place(rel, local)
    elif new.is_dir and local.is_dir:
        builder.dir_metadata[rel] = local
    elif not new.is_dir and not local.is_dir:
        builder.remove(rel)
        builder.place(rel, local)
    elif old is not None and old.is_dir == new.is_dir:
        # Only the admin changed what kind of thing this is: their choice stands.
        builder.remove(rel)
        builder.place(rel, local)
    else:
        raise _conflict(rel, local, new)


def _ensure_dir(rel: str, live: dict[str, Node], builder: _Builder) -> None:
    """Make sure the directory `rel` exists in the destination for the admin's content."""
    parts = rel.split("/")
    for depth in range(1, len(parts) + 1):
        sub = "/".join(parts[:depth])
        found = builder.lookup(sub)
        if found is None:
            # The new defaults dropped a directory the admin still keeps files in.
            builder.place(sub, live[sub])
        elif not found.is_dir:
            raise _conflict(sub, live[sub], found)


# --- trees as imported -----------------------------------------------------------


def etc_from_tree(tree: Path) -> None:
    """Give an imported root tree the deployment layout: its /etc defaults in `usr/etc`.

    A tree that ships `etc` but no `usr/etc` has it moved there (one rename, within a
    fresh import directory); the live `etc` is made by the deploy. A tree with both
    is refused unless `etc` is empty: which of two sets of defaults the OS meant cannot
    be told. A tree with neither gets empty defaults. `usr`, `etc` and `usr/etc` must
    be real directories (or absent): a symlink there would lead the rename out of the tree.
    """
    confined = Tree(tree)
    hint = "in a root tree, usr, etc and usr/etc are directories (or absent), never symlinks"
    has_usr = confined.real_dir("usr", hint)
    has_etc = confined.real_dir("etc", hint)
    etc, usr_etc = tree / "etc", tree / "usr" / "etc"
    if has_usr and confined.real_dir("usr/etc", hint):
        if has_etc:
            in_the_way = _files_in(etc)
            if in_the_way:
                raise BootkitError(
                    f"the tree has both etc and usr/etc, and etc is not empty: {in_the_way}",
                    hint="usr/etc holds the /etc defaults of such a tree: move those files "
                    "into usr/etc (or drop them from etc) and build the tree again",
                )
            etc.rmdir()
        return
    if not has_usr:
        os.mkdir(tree / "usr", 0o755)
    if has_etc:
        os.rename(etc, usr_etc)
    else:
        os.mkdir(usr_etc, 0o755)


def _files_in(directory: Path, shown: int = 5) -> str:
    """The first few files below `directory` (else its directories), for a message."""
    files: list[str] = []
    subdirs: list[str] = []
    for parent, dirs, names in os.walk(directory):
        dirs.sort()
        at = Path(parent).relative_to(directory.parent)
        for name in dirs:
            # A symlink to a directory is listed with the directories but never walked.
            (files if os.path.islink(Path(parent, name)) else subdirs).append(f"{at}/{name}")
        files.extend(f"{at}/{name}" for name in sorted(names))
    found = files or subdirs
    more = f" and {len(found) - shown} more" if len(found) > shown else ""
    return ", ".join(found[:shown]) + more
