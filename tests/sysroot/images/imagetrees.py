"""Images written into a test's layout, the trees they make, and what is left behind."""

from __future__ import annotations

import os
import stat
from collections.abc import Sequence
from pathlib import Path

from bootkit.oci.layout import ImageLayout
from bootkit.sysroot.images.source import ImageSource
from bootkit.sysroot.importers import ImportReport
from bootkit.sysroot.store import ObjectStore

from bootkit_testing.oci import Member, read_image, write_image


class Images:
    """Images written into `layout`, and the trees they make."""

    def __init__(self, tmp_path: Path, layout: ImageLayout, store: ObjectStore) -> None:
        self.tmp_path = tmp_path
        self.layout = layout
        self.store = store
        self.builds = 0

    def source(self, layers: Sequence[Sequence[Member] | bytes], tag: str = "v1",
               compression: str = "gzip") -> ImageSource:
        write_image(self.layout.root, tag, layers, compression=compression)
        manifest, config = read_image(self.layout.root, tag)
        return ImageSource(self.layout, manifest, config, f"oci:{self.layout.root}:{tag}")

    def build(self, layers: Sequence[Sequence[Member] | bytes], *,
              dropped: frozenset[str] = frozenset(), compression: str = "gzip",
              ) -> tuple[Path, ImportReport]:
        self.builds += 1
        dest = self.tmp_path / f"tree{self.builds}"
        source = self.source(layers, f"v{self.builds}", compression)
        return dest, source.import_into(dest, self.store, lambda n: None, dropped)

    def tree(self, *layers: Sequence[Member]) -> dict[str, str]:
        return listing(self.build(layers)[0])


def listing(root: Path) -> dict[str, str]:
    """What each path below `root` is: "d", "f:<content>", "l:<target>"."""
    found: dict[str, str] = {}
    for parent, dirs, files in os.walk(root):
        for name in dirs + files:
            path = Path(parent, name)
            rel = str(path.relative_to(root))
            st = path.lstat()
            if stat.S_ISDIR(st.st_mode):
                found[rel] = "d"
            elif stat.S_ISLNK(st.st_mode):
                found[rel] = f"l:{os.readlink(path)}"
            else:
                found[rel] = f"f:{path.read_bytes().decode(errors='replace')}"
    return found


def left_in(layout: ImageLayout) -> list[str]:
    """What the layers directory holds: layer dirs and temp dirs alike."""
    return sorted(os.listdir(layout.layers_dir))


def stored_objects(store: ObjectStore) -> list[str]:
    return sorted(str(p.relative_to(store.root)) for p in store.root.glob("??/*"))
