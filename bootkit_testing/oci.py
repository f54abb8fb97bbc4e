"""Test OS images in OCI image layouts, made without root: the tar streams and JSON are
written here, so a layer may hold what no unprivileged tool could archive (device
nodes, files of other owners) and what no honest one would (hostile members).

    built = write_image(layout, "v1", [[Member("usr/bin/x", data=b"...")], {"etc/y": b"..."}])

writes blobs/sha256/*, index.json (the tag as `org.opencontainers.image.ref.name`)
and oci-layout, as `skopeo copy ... oci:LAYOUT:TAG` leaves them, and says what it
wrote (`Built`); `write_index` names a multi-architecture index of such images.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import stat
import subprocess
import tarfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bootkit.base.xattrs import read_xattrs
from bootkit.oci.manifest import Descriptor, ImageConfig, Manifest, host_architecture

MANIFEST_TYPE = "application/vnd.oci.image.manifest.v1+json"
INDEX_TYPE = "application/vnd.oci.image.index.v1+json"
CONFIG_TYPE = "application/vnd.oci.image.config.v1+json"
LAYER_TYPES = {
    "none": "application/vnd.oci.image.layer.v1.tar",
    "gzip": "application/vnd.oci.image.layer.v1.tar+gzip",
    "zstd": "application/vnd.oci.image.layer.v1.tar+zstd",
}
REF_NAME = "org.opencontainers.image.ref.name"
MTIME = 1_700_000_000
_DEFAULT_MODES = {"d": 0o755, "l": 0o777}
_TYPES = {"f": tarfile.REGTYPE, "d": tarfile.DIRTYPE, "l": tarfile.SYMTYPE,
          "h": tarfile.LNKTYPE, "c": tarfile.CHRTYPE, "b": tarfile.BLKTYPE,
          "p": tarfile.FIFOTYPE, "whiteout": tarfile.REGTYPE, "opaque": tarfile.REGTYPE}


@dataclass
class Member:
    """One member of a layer. `kind`: "f" file, "d" dir, "l" symlink, "h" hardlink (to
    `target`), "c"/"b" device node, "p" fifo, "whiteout" (of `path`), "opaque" (`path`
    is the directory). `pax` adds raw pax headers."""

    path: str
    kind: str = "f"
    data: bytes = b""
    mode: int | None = None  # 0o644, 0o755 for a directory, 0o777 for a symlink
    uid: int = 0
    gid: int = 0
    target: str = ""
    xattrs: Mapping[str, bytes] = field(default_factory=dict)
    mtime: float = MTIME
    device: tuple[int, int] = (1, 3)
    pax: Mapping[str, str] = field(default_factory=dict)

    def name(self) -> str:
        """The name in the archive."""
        if self.kind not in ("whiteout", "opaque"):
            return self.path
        parent, _, base = self.path.rpartition("/")
        marker = ".wh..wh..opq" if self.kind == "opaque" else f".wh.{base}"
        if self.kind == "opaque":
            parent = "" if self.path == "." else self.path
        return f"{parent}/{marker}" if parent else marker


def tar_info(m: Member) -> tarfile.TarInfo:
    info = tarfile.TarInfo(m.name())
    info.type = _TYPES[m.kind]
    info.mode = m.mode if m.mode is not None else _DEFAULT_MODES.get(m.kind, 0o644)
    info.uid, info.gid = m.uid, m.gid
    info.uname = info.gname = ""
    info.mtime = m.mtime
    info.linkname = m.target
    info.devmajor, info.devminor = m.device
    info.size = len(m.data) if m.kind == "f" else 0
    headers = {f"SCHILY.xattr.{k}": v.decode("utf-8", "surrogateescape")
               for k, v in m.xattrs.items()}
    info.pax_headers = {**headers, **m.pax}
    return info


def write_layer(members: Sequence[Member], compression: str = "none") -> bytes:
    """The layer of `members`, in that order, compressed as asked."""
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tf:
        for m in members:
            tf.addfile(tar_info(m), io.BytesIO(m.data) if m.kind == "f" else None)
    return compress(out.getvalue(), compression)


def compress(data: bytes, compression: str) -> bytes:
    if compression == "gzip":
        # Level 6 as docker and skopeo write: 9 takes four times as long for 1% less.
        return gzip.compress(data, compresslevel=6, mtime=0)
    if compression == "zstd":
        return subprocess.run(["zstd", "-q", "-c"], input=data, capture_output=True,
                              check=True).stdout
    if compression == "none":
        return data
    raise ValueError(f"unknown compression {compression!r}")


def _sha256(data: bytes) -> str:
    return f"sha256:{hashlib.sha256(data).hexdigest()}"


def canonical(doc: Any) -> bytes:
    """`doc` as JSON with sorted keys and no spaces: the encoding of every document here."""
    return json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()


def write_blob(layout: Path, data: bytes) -> str:
    digest = _sha256(data)
    path = layout / "blobs" / "sha256" / digest.partition(":")[2]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return digest


Layer = Sequence[Member] | Mapping[str, bytes] | bytes
"""A layer to write: its members, files by name and content, or a whole tar stream."""


@dataclass(frozen=True)
class Built:
    """What `write_image` wrote: the digests of the manifest, config and layer blobs,
    the layers' diff_ids, and every blob's size by digest."""

    manifest: str
    config: str
    layers: list[str]
    diff_ids: list[str]
    sizes: dict[str, int]


def config_doc(diff_ids: Sequence[str], labels: Mapping[str, str],
               architecture: str) -> dict[str, Any]:
    """The image configuration `write_image` writes."""
    return {
        "architecture": architecture, "os": "linux", "config": {"Labels": dict(labels)},
        "rootfs": {"type": "layers", "diff_ids": list(diff_ids)},
        "history": [{"created_by": "bootkit_testing.oci"} for _ in diff_ids],
    }


def _layer_tar(layer: Layer) -> bytes:
    if isinstance(layer, bytes):
        return layer
    if isinstance(layer, Mapping):
        return write_layer([Member(path, data=data) for path, data in layer.items()])
    return write_layer(layer)


def write_image(
    layout: Path, tag: str, layers: Sequence[Layer], *,
    labels: Mapping[str, str] | None = None, architecture: str | None = None,
    compression: str = "gzip",
) -> Built:
    """Write an image of `layers` into the layout at `layout` (made if new) under `tag`,
    labelled bootable unless `labels` say otherwise, for this machine's architecture
    unless `architecture` names another."""
    sizes: dict[str, int] = {}

    def blob(data: bytes, media_type: str) -> dict[str, object]:
        digest = write_blob(layout, data)
        sizes[digest] = len(data)
        return {"mediaType": media_type, "digest": digest, "size": len(data)}

    tars = [_layer_tar(layer) for layer in layers]
    descriptors = [blob(compress(tar, compression), LAYER_TYPES[compression]) for tar in tars]
    diff_ids = [_sha256(tar) for tar in tars]
    config = blob(canonical(config_doc(
        diff_ids, {"containers.bootc": "1"} if labels is None else labels,
        architecture or host_architecture())), CONFIG_TYPE)
    manifest = blob(canonical({"schemaVersion": 2, "mediaType": MANIFEST_TYPE,
                               "config": config, "layers": descriptors}), MANIFEST_TYPE)
    _tag(layout, tag, manifest)
    return Built(str(manifest["digest"]), str(config["digest"]),
                 [str(d["digest"]) for d in descriptors], diff_ids, sizes)


def write_index(layout: Path, tag: str, images: Mapping[str, Built]) -> str:
    """Name `tag` in `layout` an OCI index of the images there, each for the
    architecture it is listed under; the index's digest."""
    index = canonical({"schemaVersion": 2, "mediaType": INDEX_TYPE, "manifests": [
        {"mediaType": MANIFEST_TYPE, "digest": built.manifest,
         "size": built.sizes[built.manifest], "platform": {"architecture": arch, "os": "linux"}}
        for arch, built in images.items()]})
    digest = write_blob(layout, index)
    _tag(layout, tag, {"mediaType": INDEX_TYPE, "digest": digest, "size": len(index)})
    return digest


def _tag(layout: Path, tag: str, descriptor: Mapping[str, object]) -> None:
    """List `descriptor` in the layout's index.json as `tag`, in place of what was."""
    (layout / "oci-layout").write_text('{"imageLayoutVersion":"1.0.0"}')
    index_path = layout / "index.json"
    index: dict[str, Any] = (json.loads(index_path.read_text()) if index_path.exists()
                             else {"schemaVersion": 2, "manifests": []})
    index["manifests"] = [d for d in index["manifests"]
                          if d.get("annotations", {}).get(REF_NAME) != tag]
    index["manifests"].append({**descriptor, "annotations": {REF_NAME: tag}})
    index_path.write_text(json.dumps(index))


def read_image(layout: Path, tag: str) -> tuple[Manifest, ImageConfig]:
    """The manifest and configuration of `tag` in a layout this module wrote."""
    index = json.loads((layout / "index.json").read_text())
    found = [d for d in index["manifests"] if d.get("annotations", {}).get(REF_NAME) == tag]
    digest = found[-1]["digest"]
    raw = (layout / "blobs/sha256" / digest.partition(":")[2]).read_bytes()
    doc = json.loads(raw)

    def descriptor(d: dict[str, object]) -> Descriptor:
        return Descriptor(str(d["mediaType"]), str(d["digest"]), int(str(d["size"])))

    config_d = descriptor(doc["config"])
    config = json.loads((layout / "blobs/sha256" / config_d.digest.partition(":")[2]).read_text())
    manifest = Manifest(digest, config_d, tuple(descriptor(d) for d in doc["layers"]), raw)
    return manifest, ImageConfig(
        config_d.digest, config["architecture"], config["os"],
        config.get("config", {}).get("Labels") or {}, tuple(config["rootfs"]["diff_ids"]),
    )


def tree_members(tree: Path) -> list[Member]:
    """The members of an archive of `tree` ("." its root), parents first; a second name
    of a file is a hardlink to the first."""
    members: list[Member] = []
    first: dict[tuple[int, int], str] = {}

    def member(rel: str) -> Member:
        path = tree / rel
        st = path.lstat()
        m = Member(rel, mode=stat.S_IMODE(st.st_mode), uid=st.st_uid, gid=st.st_gid,
                   xattrs=dict(read_xattrs(path)), mtime=int(st.st_mtime))
        if stat.S_ISDIR(st.st_mode):
            m.kind = "d"
        elif stat.S_ISLNK(st.st_mode):
            m.kind, m.target = "l", os.readlink(path)
        elif stat.S_ISREG(st.st_mode) and (st.st_dev, st.st_ino) in first:
            m.kind, m.target = "h", first[(st.st_dev, st.st_ino)]
        elif stat.S_ISREG(st.st_mode):
            m.data = path.read_bytes()
            if st.st_nlink > 1:
                first[(st.st_dev, st.st_ino)] = rel
        else:
            m.kind = "c" if stat.S_ISCHR(st.st_mode) else "p"
            m.device = (os.major(st.st_rdev), os.minor(st.st_rdev))
        return m

    def walk(rel: str) -> None:
        for name in sorted(os.listdir(tree / rel)):
            m = member(f"{rel}/{name}" if rel != "." else name)
            members.append(m)
            if m.kind == "d":
                walk(m.path)

    members.append(member("."))
    walk(".")
    return members


def image_from_tree(
    tree: Path, layout: Path, tag: str, split: Callable[[Member], int] | int, **kw: object
) -> Built:
    """An image of `tree` whose members are spread over layers: `split` layers of about
    equal count in walk order, or the layer `split(member)` says (a hardlink must not
    come in a lower layer than its file). Options go to `write_image`."""
    members = tree_members(tree)
    if isinstance(split, int):
        count = split

        def layer_of(index: int, m: Member) -> int:
            return index * count // len(members)
    else:
        count = 1 + max((split(m) for m in members), default=0)

        def layer_of(index: int, m: Member) -> int:
            return split(m)

    layers: list[list[Member]] = [[] for _ in range(count)]
    for index, m in enumerate(members):
        layers[layer_of(index, m)].append(m)
    return write_image(layout, tag, layers, **kw)  # type: ignore[arg-type]
