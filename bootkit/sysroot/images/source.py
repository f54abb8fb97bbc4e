"""An image of an OCI image layout as the source of a deployment's tree."""

from __future__ import annotations

import os
import stat
from collections.abc import Callable
from pathlib import Path

from bootkit.base.filetypes import FileType
from bootkit.base.seen import READ_FLAGS, copy_fd
from bootkit.errors import BootkitError
from bootkit.oci.layout import ImageLayout
from bootkit.oci.manifest import ImageConfig, Manifest
from bootkit.sysroot.images.layerrecord import LayerRecord
from bootkit.sysroot.images.layers import RECORD, import_layers, layer_dir
from bootkit.sysroot.images.merge import MergedEntry, merge
from bootkit.sysroot.importers.tree import (
    IMPORT_ERRORS,
    ImportReport,
    Progress,
    TreeBuilder,
    import_error,
)
from bootkit.sysroot.store import FileMeta, ObjectStore, create_file, object_key

# What a running system mounts over or fills at boot: an image's content there is
# left out (the directories themselves are kept), as container engines leave it.
RUNTIME_DIRS = frozenset({"run", "tmp", "proc", "sys", "dev"})


class ImageSource:
    """The tree an image's layers make. Each layer is imported once (see `layers`), so a
    deploy of an image that shares layers with one deployed before reads only the new
    ones; the tree is then built from the layers' records and stored objects."""

    def __init__(
        self, layout: ImageLayout, manifest: Manifest, config: ImageConfig, origin: str,
        fetch: Callable[[Progress], None] | None = None,
    ) -> None:
        if len(manifest.layers) != len(config.diff_ids):
            raise BootkitError(
                f"image {origin} has {len(manifest.layers)} layers but its configuration "
                f"names {len(config.diff_ids)}", hint="the image is broken; rebuild it")
        self.layout = layout
        self.manifest = manifest
        self.config = config
        self.origin = origin
        self.label = origin.rstrip("/").rpartition("/")[2] or origin
        self.fetch = fetch

    def size(self) -> int:
        """Compressed bytes of the layers not imported yet: twice over for a layer still
        to download, which is counted as it lands and again as it is read."""
        total = 0
        for blob, diff_id in zip(self.manifest.layers, self.config.diff_ids, strict=True):
            if (layer_dir(self.layout, diff_id) / RECORD).is_file():
                continue
            total += blob.size if self.layout.has_blob(blob.digest) else 2 * blob.size
        return total

    def import_into(
        self, dest: Path, store: ObjectStore, progress: Progress, dropped: frozenset[str]
    ) -> ImportReport:
        """Download what is missing (`fetch`), import each new layer, build `dest`
        (created) from them all; the top-level names in `dropped` are not made."""
        if self.fetch is not None:
            self.fetch(progress)
        records = self.import_layers(store, progress)
        merged = merge(records)
        dest.mkdir()
        dirs = [layer_dir(self.layout, diff_id) for diff_id in self.config.diff_ids]
        return _Build(dest, store, progress, dirs, self.origin).run(merged, dropped)

    def import_layers(self, store: ObjectStore, progress: Progress) -> list[LayerRecord]:
        layers = list(zip(self.manifest.layers, self.config.diff_ids, strict=True))
        return import_layers(self.layout, store, layers, progress)

    def imported(self) -> None:
        """Nothing to keep: the layers were kept as they were imported."""


class _Build:
    """The new tree, made from the merged layers through a TreeBuilder, so that its
    digests and notes are made as for every source."""

    def __init__(
        self, dest: Path, store: ObjectStore, progress: Progress, layer_dirs: list[Path],
        origin: str,
    ) -> None:
        self.tree = TreeBuilder(dest, store, progress)
        self.layer_dirs = layer_dirs
        self.origin = origin
        # The first name made of each file with hardlinks: the others link to it.
        self.made: dict[int, str] = {}

    def run(self, merged: list[MergedEntry], dropped: frozenset[str]) -> ImportReport:
        for item in merged:
            top, _, below = item.path.partition("/")
            if top in dropped or (below and top in RUNTIME_DIRS):
                continue
            try:
                self.add(item)
            except IMPORT_ERRORS as err:
                raise import_error(f"/{item.path} of image {self.origin}", err) from None
        return self.tree.finish()

    def add(self, item: MergedEntry) -> None:
        entry, meta = item.entry, item.entry.meta()
        if item.path == ".":
            # As for an archive, the root is no part of the notes (see TarSource).
            self.tree.add_dir(".", meta, noted=False)
        elif entry.kind == "d":
            self.tree.add_dir(item.path, meta)
        elif entry.kind == "l":
            self.tree.add_symlink(item.path, entry.target, meta)
        elif entry.kind == "s":
            self.tree.skip(item.path, _special(entry.target))
        elif item.inode in self.made:
            self.tree.add_hardlink(item.path, self.made[item.inode], meta, entry.size)
        else:
            fill = self.copier(item, meta)
            self.tree.add_file(item.path, meta, entry.sha256, fill, entry.size)
            self.made[item.inode] = item.path

    def copier(self, item: MergedEntry, meta: FileMeta) -> Callable[[str], None]:
        """What makes a copy of a file from its layer's object, checked as it is copied."""
        layer = self.layer_dirs[item.layer]
        obj = layer / "objects" / object_key(item.entry.sha256, meta)

        def fill(dst: str) -> None:
            self.tree.space.claim(item.path, item.entry.size)
            try:
                src = os.open(obj, READ_FLAGS)
            except FileNotFoundError:
                raise _damaged(layer, f"{obj.name} is missing") from None
            try:
                if not stat.S_ISREG(os.fstat(src).st_mode):
                    raise _damaged(layer, f"{obj.name} is not a regular file")
                create_file(dst, meta, lambda fd: _copy_checked(src, fd, item, layer))
            finally:
                os.close(src)

        return fill


def _copy_checked(src: int, dst: int, item: MergedEntry, layer: Path) -> None:
    if copy_fd(src, dst) != item.entry.sha256:
        raise _damaged(layer, f"the object of /{item.path} does not hold its content")


def _damaged(layer: Path, why: str) -> BootkitError:
    return BootkitError(f"imported layer {layer} is damaged: {why}",
                        hint=f"remove {layer} and pull the image again")


def _special(kind: str) -> str:
    return FileType(kind).description if kind else "special file"
