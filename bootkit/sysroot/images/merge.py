"""An image's layers merged into one tree, by the OCI image spec's rules.

Each layer, lowest first:
- its whiteouts and opaque markers act on the layers below it, never on its own
  entries, wherever in the layer they stand: `.wh.NAME` removes NAME with all below
  it, `.wh..wh..opq` the children of its directory;
- then its entries, in archive order: a directory over a directory keeps the
  children and takes the new metadata; anything else replaces what was there, with
  all below it. A parent missing in the tree is made as a directory 0755 owned by
  root, as the tar importer makes one; a parent that is not a directory is refused,
  never written through;
- a hardlink names an earlier file of its layer, else the file at that path in the
  layers below. Its name stays that file even if a later layer replaces the other
  name, as when layers are unpacked one over the other.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from bootkit.errors import BootkitError
from bootkit.sysroot.images.layerrecord import LayerEntry, LayerRecord
from bootkit.sysroot.importers.tarmembers import IMPLICIT_DIR_MODE

_HOSTILE = "the image may be malicious or broken; ask its publisher to rebuild it"
_KIND_NAMES = {"f": "regular file", "l": "symlink", "s": "special file"}


@dataclass(frozen=True)
class MergedEntry:
    path: str  # "." for the root, which comes first
    entry: LayerEntry  # never a hardlink: a hardlink's is the file's it names
    layer: int  # index of the layer whose objects hold a file; -1 for an implied directory
    inode: int  # names of one file share it, a number of their own; 0 for all but files


class _Node:
    __slots__ = ("children", "entry", "inode", "layer")

    def __init__(self, entry: LayerEntry, layer: int, inode: int = 0) -> None:
        self.entry = entry
        self.layer = layer
        self.inode = inode
        # Only a directory has children.
        self.children: dict[str, _Node] | None = {} if entry.kind == "d" else None


def implied_dir(path: str, mtime: float = 0.0) -> LayerEntry:
    return LayerEntry(path, "d", IMPLICIT_DIR_MODE, 0, 0, mtime, ())


def merge(records: Sequence[LayerRecord]) -> list[MergedEntry]:
    """The tree the layers `records` (lowest first) make: parents before children,
    the entries of a directory in name order, as a directory's walk gives them."""
    root = _Node(implied_dir("."), -1)
    inodes = itertools.count(1)
    for index, record in enumerate(records):
        _remove_lower(root, record)
        files: dict[str, _Node] = {}  # this layer's files, for its hardlinks
        for entry in record.entries:
            _place(root, entry, _Layer(index, record.diff_id), files, inodes)
    return list(_walk(root))


@dataclass(frozen=True)
class _Layer:
    index: int
    diff_id: str


def _find(root: _Node, path: str) -> _Node | None:
    """The node at `path`, reached through directories only: never through a symlink."""
    node = root
    if path == ".":
        return node
    for part in path.split("/"):
        if node.children is None:
            return None
        found = node.children.get(part)
        if found is None:
            return None
        node = found
    return node


def _remove_lower(root: _Node, record: LayerRecord) -> None:
    for path in record.opaque:
        node = _find(root, path)
        if node is not None and node.children is not None:
            node.children.clear()
    for path in record.whiteouts:
        parent, _, name = path.rpartition("/")
        node = _find(root, parent or ".")
        if node is not None and node.children is not None:
            node.children.pop(name, None)


def _parent(root: _Node, entry: LayerEntry, layer: _Layer) -> dict[str, _Node]:
    """The children of the directory that `entry` goes in, missing parents made."""
    node = root
    done = ""
    for part in entry.path.split("/")[:-1]:
        done = f"{done}/{part}" if done else part
        assert node.children is not None
        child = node.children.get(part)
        if child is None:
            child = node.children[part] = _Node(implied_dir(done, entry.mtime), -1)
        elif child.children is None:
            raise BootkitError(
                f"layer {layer.diff_id} has {entry.path!r} below {done!r}, which is a "
                f"{_KIND_NAMES[child.entry.kind]} in the layers below it", hint=_HOSTILE)
        node = child
    assert node.children is not None
    return node.children


def _place(
    root: _Node, entry: LayerEntry, layer: _Layer, files: dict[str, _Node],
    inodes: Iterator[int],
) -> None:
    if entry.path == ".":
        root.entry, root.layer = entry, layer.index
        return
    children = _parent(root, entry, layer)
    name = entry.path.rpartition("/")[2]
    old = children.get(name)
    if entry.kind == "d" and old is not None and old.children is not None:
        old.entry, old.layer = entry, layer.index
        return
    if entry.kind == "h":
        target = files.get(entry.target) or _find(root, entry.target)
        if target is None or target.entry.kind != "f":
            raise BootkitError(
                f"layer {layer.diff_id} has {entry.path!r} as a hardlink to "
                f"{entry.target!r}, which is no regular file of it or the layers below",
                hint=_HOSTILE)
        node = _Node(target.entry, target.layer, target.inode)
    else:
        node = _Node(entry, layer.index, next(inodes) if entry.kind == "f" else 0)
    children[name] = node
    if node.entry.kind == "f":
        files[entry.path] = node


def _walk(root: _Node) -> Iterator[MergedEntry]:
    # A stack, not recursion: a path may be 2048 directories deep.
    stack = [(".", root)]
    while stack:
        path, node = stack.pop()
        yield MergedEntry(path, node.entry, node.layer, node.inode)
        if node.children:
            prefix = "" if path == "." else f"{path}/"
            for name in sorted(node.children, reverse=True):
                stack.append((prefix + name, node.children[name]))
