"""Removing what no kept deployment needs from the OCI layout: manifests, configs and
layer blobs, the layers' imported records, and then the stored files only they held.

What is kept: the images of every deployment on disk (listed, staged or in flight),
and the one `upgrade --download-only` left for the next upgrade.
"""

from __future__ import annotations

import contextlib
import os

from bootkit.base.files import remove_tree
from bootkit.errors import BootkitError
from bootkit.oci.layout import ImageLayout
from bootkit.oci.manifest import Manifest, parse_manifest_or_index
from bootkit.records import downloaded
from bootkit.records.deployment import Deployment, ImageOrigin
from bootkit.sysroot import inventory
from bootkit.sysroot.layout import Sysroot


def kept_images(sr: Sysroot) -> list[ImageOrigin]:
    origins = []
    for ref in inventory.found_on_disk(sr):
        os_name, dep_id = ref.split("/", 1)
        with contextlib.suppress(BootkitError, OSError):  # damaged: fsck's business
            dep = Deployment.load(sr.metadata_path(os_name, dep_id))
            if dep.image is not None:
                origins.append(dep.image)
    with contextlib.suppress(BootkitError):
        ready = downloaded.load(sr.downloaded_path)
        if ready is not None:
            origins.append(ready)
    return origins


def prune_images(sr: Sysroot) -> int:
    """Remove unneeded blobs and layers; the caller holds the sysroot's lock. Returns
    the bytes of blobs freed (the files of layers are freed by the store's prune)."""
    layout = sr.images
    if not layout.root.is_dir():
        return 0
    origins = kept_images(sr)
    blobs: set[str] = set()
    for origin in origins:
        blobs |= {origin.manifest_digest, origin.config_digest}
        manifest = _manifest(layout, origin)
        if manifest is not None:
            blobs |= {layer.digest for layer in manifest.layers}
    names = {"bootkit-" + o.manifest_digest.removeprefix("sha256:") for o in origins}
    freed = layout.remove_unused(blobs, names)
    layers = {d.removeprefix("sha256:") for o in origins for d in o.diff_ids}
    store = sr.objects
    doomed = [e for e in _entries(layout) if e not in layers]
    if doomed:
        store.mark_prune_pending()
        for name in doomed:
            remove_tree(layout.layers_dir / name)
        store.prune()
    return freed


def _manifest(layout: ImageLayout, origin: ImageOrigin) -> Manifest | None:
    with contextlib.suppress(BootkitError, OSError):
        found = parse_manifest_or_index(layout.read_blob(origin.manifest_digest),
                                        origin.manifest_digest)
        if isinstance(found, Manifest):
            return found
    return None


def _entries(layout: ImageLayout) -> list[str]:
    """Every name under layers/, temporary ones of an interrupted import included."""
    try:
        return sorted(os.listdir(layout.layers_dir))
    except FileNotFoundError:
        return []
