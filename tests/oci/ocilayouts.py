"""Small OCI layouts written blob by blob, for the tests of bootkit.oci."""

from __future__ import annotations

import gzip
import io
import json
import tarfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bootkit.oci.manifest import digest_of, host_architecture

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"


def layer_tar(files: Mapping[str, bytes]) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w") as tf:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return out.getvalue()


def canonical(doc: Any) -> bytes:
    return json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()


@dataclass
class Built:
    """What `write_image` wrote: digests, and each blob's size."""

    manifest: str
    config: str
    layers: list[str]
    diff_ids: list[str]
    sizes: dict[str, int] = field(default_factory=dict)


def add_blob(layout: Path, data: bytes) -> str:
    digest = digest_of(data)
    blobs = layout / "blobs" / "sha256"
    blobs.mkdir(parents=True, exist_ok=True)
    (blobs / digest.removeprefix("sha256:")).write_bytes(data)
    return digest


def config_doc(diff_ids: list[str], labels: Mapping[str, str] | None,
               architecture: str) -> dict[str, Any]:
    return {"architecture": architecture, "os": "linux",
            "config": {"Labels": dict(labels) if labels is not None else None},
            "rootfs": {"type": "layers", "diff_ids": diff_ids}}


def write_image(
    layout: Path,
    tag: str,
    layers: list[Mapping[str, bytes]],
    *,
    labels: Mapping[str, str] | None = None,
    architecture: str | None = None,
) -> Built:
    """An image of gzip layers in the OCI layout `layout` (made if new), named `tag`."""
    labels = {"containers.bootc": "1"} if labels is None else labels
    blobs, diff_ids, sizes = [], [], {}
    for files in layers:
        tar = layer_tar(files)
        blob = gzip.compress(tar, mtime=0)
        blobs.append(add_blob(layout, blob))
        diff_ids.append(digest_of(tar))
        sizes[blobs[-1]] = len(blob)
    config = canonical(config_doc(diff_ids, labels, architecture or host_architecture()))
    config_digest = add_blob(layout, config)
    sizes[config_digest] = len(config)
    manifest = canonical({
        "schemaVersion": 2, "mediaType": OCI_MANIFEST,
        "config": {"mediaType": OCI_CONFIG, "digest": config_digest, "size": len(config)},
        "layers": [{"mediaType": OCI_LAYER_GZIP, "digest": d, "size": sizes[d]} for d in blobs],
    })
    manifest_digest = add_blob(layout, manifest)
    sizes[manifest_digest] = len(manifest)
    add_to_index(layout, tag, manifest_digest, len(manifest))
    return Built(manifest_digest, config_digest, blobs, diff_ids, sizes)


def add_to_index(layout: Path, tag: str, digest: str, size: int,
                 media_type: str = OCI_MANIFEST) -> None:
    (layout / "oci-layout").write_text('{"imageLayoutVersion": "1.0.0"}')
    index_path = layout / "index.json"
    index = (json.loads(index_path.read_text()) if index_path.exists()
             else {"schemaVersion": 2, "manifests": []})
    index["manifests"] = [
        e for e in index["manifests"]
        if e.get("annotations", {}).get("org.opencontainers.image.ref.name") != tag
    ] + [{"mediaType": media_type, "digest": digest, "size": size,
          "annotations": {"org.opencontainers.image.ref.name": tag}}]
    index_path.write_text(json.dumps(index))


def write_index(layout: Path, tag: str, images: Mapping[str, Built]) -> str:
    """An OCI index in `layout` of the images there, by architecture, named `tag`."""
    index = canonical({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [
        {"mediaType": OCI_MANIFEST, "digest": built.manifest, "size": built.sizes[built.manifest],
         "platform": {"architecture": arch, "os": "linux"}} for arch, built in images.items()]})
    digest = add_blob(layout, index)
    add_to_index(layout, tag, digest, len(index), OCI_INDEX)
    return digest
