"""What an image's manifest, index and config say, read from hostile bytes.

A registry can send anything, and bootkit runs as root: the JSON is bounded
before it is parsed, every digest and size is checked, counts are bounded, and a
duplicate key (which other parsers may read differently) is refused. OCI and
Docker schema 2 manifests, indexes and lists are read; schema 1 is refused.
"""

from __future__ import annotations

import hashlib
import json
import platform
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from bootkit.errors import BootkitError
from bootkit.formats import bootvalues

VERSION_LABEL = "org.opencontainers.image.version"

MAX_JSON = 4 << 20
MAX_LAYERS = 500
MAX_INSTANCES = 1000  # manifests in an index
MAX_LABELS = 4096
_MAX_STRING = 1 << 16
_MAX_SIZE = 1 << 53  # what JSON carries exactly

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
_SCHEMA1 = ("application/vnd.docker.distribution.manifest.v1+json",
            "application/vnd.docker.distribution.manifest.v1+prettyjws")
LAYER_MEDIA_TYPES = frozenset({
    "application/vnd.oci.image.layer.v1.tar",
    "application/vnd.oci.image.layer.v1.tar+gzip",
    "application/vnd.oci.image.layer.v1.tar+zstd",
    "application/vnd.docker.image.rootfs.diff.tar.gzip",
})
_MANIFEST_TYPES = (OCI_MANIFEST, DOCKER_MANIFEST)
_INDEX_TYPES = (OCI_INDEX, DOCKER_LIST)
_CONFIG_TYPES = (OCI_CONFIG, DOCKER_CONFIG)
_SHA256 = re.compile(r"sha256:[0-9a-f]{64}")
_REBUILD = "the image may be corrupt or malicious; check where it comes from"
# platform.machine() -> the architecture names OCI images use (Go's GOARCH).
_ARCHITECTURES = {
    "x86_64": "amd64", "amd64": "amd64", "aarch64": "arm64", "arm64": "arm64",
    "armv7l": "arm", "armv6l": "arm", "i386": "386", "i686": "386",
    "ppc64le": "ppc64le", "s390x": "s390x", "riscv64": "riscv64", "loongarch64": "loong64",
}
_TRUE = ("1", "true", "yes", "on")


def digest_of(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def check_digest(text: object, what: str) -> str:
    """`text` if it is a sha256 digest in canonical form; the only kind bootkit trusts."""
    if not isinstance(text, str) or not _SHA256.fullmatch(text):
        shown = repr(text)[:100]
        raise BootkitError(f"{what}: {shown} is not a sha256 digest (sha256:<64 lower-case hex>)",
                           hint=_REBUILD)
    return text


@dataclass(frozen=True)
class Descriptor:
    media_type: str
    digest: str
    size: int


@dataclass(frozen=True)
class Platformed:
    """An index's entry: one image manifest and the platform it is built for."""

    descriptor: Descriptor
    os: str
    architecture: str
    variant: str


@dataclass(frozen=True)
class Index:
    digest: str
    manifests: tuple[Platformed, ...]

    def choose(self, arch: str) -> Descriptor:
        """The image for linux on `arch` (the first listed, when variants differ)."""
        for entry in self.manifests:
            if entry.os == "linux" and entry.architecture == arch:
                return entry.descriptor
        offered = sorted({f"{e.os}/{e.architecture}" for e in self.manifests}) or ["nothing"]
        raise BootkitError(
            f"the image index {self.digest} has no image for linux/{arch}; "
            f"it offers {', '.join(offered[:20])}",
            hint=f"use an image built for {arch}",
        )


@dataclass(frozen=True)
class Manifest:
    digest: str
    config: Descriptor
    layers: tuple[Descriptor, ...]
    raw: bytes


@dataclass(frozen=True)
class ImageConfig:
    digest: str
    architecture: str
    os: str
    labels: Mapping[str, str]
    diff_ids: tuple[str, ...]

    @property
    def version(self) -> str | None:
        """The version label, if it is one a boot menu and `status` can show: an image
        may label anything, and this is only a name for what its digest identifies."""
        value = self.labels.get(VERSION_LABEL)
        try:
            return bootvalues.check_version(value) if value else None
        except BootkitError:
            return None


def load_json(raw: bytes, what: str, limit: int = MAX_JSON) -> Any:
    """The JSON document in `raw`, at most `limit` bytes, with no key twice."""
    if len(raw) > limit:
        raise BootkitError(f"{what} is larger than {limit} bytes", hint=_REBUILD)
    try:
        return json.loads(raw.decode("utf-8"), object_pairs_hook=_unique_keys,
                          parse_constant=_no_constant)
    except (UnicodeDecodeError, ValueError, RecursionError) as err:
        raise BootkitError(f"{what} is not valid JSON: {str(err)[:200]}", hint=_REBUILD) from None


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result = dict(pairs)
    if len(result) != len(pairs):
        raise ValueError("a key appears twice in one object")
    return result


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


class _Reader:
    """Typed access to a parsed JSON object; every error names the document and the field."""

    def __init__(self, what: str) -> None:
        self.what = what

    def fail(self, field: str, problem: str) -> BootkitError:
        return BootkitError(f"{self.what}: {field} {problem}", hint=_REBUILD)

    def obj(self, value: Any, field: str) -> dict[str, Any]:
        if not isinstance(value, dict):
            raise self.fail(field, "is not an object")
        return value

    def items(self, value: Any, field: str, limit: int) -> list[Any]:
        if not isinstance(value, list):
            raise self.fail(field, "is not a list")
        if len(value) > limit:
            raise self.fail(field, f"has more than {limit} entries")
        return value

    def text(self, value: Any, field: str) -> str:
        if not isinstance(value, str) or len(value) > _MAX_STRING:
            raise self.fail(field, "is not a string of reasonable length")
        return value

    def descriptor(self, value: Any, field: str) -> Descriptor:
        d = self.obj(value, field)
        size = d.get("size")
        # bool is an int to Python, never to JSON's readers.
        if not isinstance(size, int) or isinstance(size, bool) or not 0 <= size < _MAX_SIZE:
            raise self.fail(f"{field}.size", "is not a non-negative integer")
        return Descriptor(self.text(d.get("mediaType"), f"{field}.mediaType"),
                          check_digest(d.get("digest"), f"{self.what}: {field}.digest"), size)


def parse_manifest_or_index(raw: bytes, digest: str) -> Manifest | Index:
    """The manifest or index in `raw`, which must hash to `digest` (what it was fetched as)."""
    check_digest(digest, "manifest digest")
    what = f"image manifest {digest}"
    if digest_of(raw) != digest:
        raise BootkitError(f"{what}: the content does not match its digest", hint=_REBUILD)
    r = _Reader(what)
    doc = r.obj(load_json(raw, what), "the document")
    media_type, version = doc.get("mediaType"), doc.get("schemaVersion")
    if type(version) is not int:  # not a bool, which Python takes for 1
        version = None
    if media_type in _SCHEMA1 or version == 1:
        raise BootkitError(f"{what} is a Docker schema 1 manifest, which bootkit does not read",
                           hint="push the image again with a current tool (schema 2 or OCI)")
    if version != 2:
        raise r.fail("schemaVersion", "is not 2")
    if media_type is None:  # optional in OCI: the shape tells which one it is
        if ("manifests" in doc) == ("config" in doc or "layers" in doc):
            raise r.fail("the document", "is neither a manifest nor an index")
        media_type = OCI_INDEX if "manifests" in doc else OCI_MANIFEST
    if media_type in _INDEX_TYPES:
        return Index(digest, _platformed(r, doc))
    if media_type not in _MANIFEST_TYPES:
        raise r.fail("mediaType", f"{str(media_type)[:100]!r} is not an image manifest")
    config = r.descriptor(doc.get("config"), "config")
    if config.media_type not in _CONFIG_TYPES:
        raise BootkitError(f"{what} is not a container image (its config is "
                           f"{config.media_type[:100]!r})", hint="name a bootable OS image")
    layers = r.items(doc.get("layers"), "layers", MAX_LAYERS)
    return Manifest(digest, config,
                    tuple(r.descriptor(d, f"layers[{i}]") for i, d in enumerate(layers)), raw)


def _platformed(r: _Reader, doc: dict[str, Any]) -> tuple[Platformed, ...]:
    result = []
    for i, value in enumerate(r.items(doc.get("manifests"), "manifests", MAX_INSTANCES)):
        field = f"manifests[{i}]"
        descriptor = r.descriptor(value, field)
        if descriptor.media_type not in _MANIFEST_TYPES:
            continue  # nested indexes, attestations and such are no image to boot
        p = r.obj(value.get("platform", {}), f"{field}.platform")
        result.append(Platformed(
            descriptor,
            r.text(p.get("os", ""), f"{field}.platform.os"),
            r.text(p.get("architecture", ""), f"{field}.platform.architecture"),
            r.text(p.get("variant", ""), f"{field}.platform.variant"),
        ))
    return tuple(result)


def parse_config(raw: bytes, digest: str) -> ImageConfig:
    """The config in `raw`, which must hash to `digest`; check_layers compares its
    layer count with the manifest's."""
    check_digest(digest, "config digest")
    what = f"image config {digest}"
    if digest_of(raw) != digest:
        raise BootkitError(f"{what}: the content does not match its digest", hint=_REBUILD)
    r = _Reader(what)
    doc = r.obj(load_json(raw, what), "the document")
    rootfs = r.obj(doc.get("rootfs"), "rootfs")
    if rootfs.get("type") != "layers":
        raise r.fail("rootfs.type", "is not \"layers\"")
    diff_ids = r.items(rootfs.get("diff_ids"), "rootfs.diff_ids", MAX_LAYERS)
    return ImageConfig(
        digest,
        r.text(doc.get("architecture"), "architecture"),
        r.text(doc.get("os"), "os"),
        _labels(r, doc.get("config")),
        tuple(check_digest(d, f"{what}: rootfs.diff_ids[{i}]") for i, d in enumerate(diff_ids)),
    )


def _labels(r: _Reader, config: Any) -> dict[str, str]:
    if config is None:
        return {}
    labels = r.obj(config, "config").get("Labels")
    if labels is None:
        return {}
    labels = r.obj(labels, "config.Labels")
    if len(labels) > MAX_LABELS:
        raise r.fail("config.Labels", f"has more than {MAX_LABELS} entries")
    return {r.text(k, "a label name"): r.text(v, f"label {k[:100]!r}") for k, v in labels.items()}


def host_architecture() -> str:
    """The OCI name of this machine's architecture (amd64, arm64, ...)."""
    machine = platform.machine()
    return _ARCHITECTURES.get(machine, machine.lower())


def check_bootable(config: ImageConfig, ref: str) -> None:
    """Refuse an image that does not declare itself a bootable OS."""
    for label in ("containers.bootc", "ostree.bootable"):
        if config.labels.get(label, "").strip().lower() in _TRUE:
            return
    raise BootkitError(
        f"{ref} is not a bootable OS image (it has neither the label containers.bootc=1 "
        "nor ostree.bootable)",
        hint="build it FROM a bootable base image, or add LABEL containers.bootc=1 if it holds "
             "a kernel and an OS tree",
    )


def check_architecture(config: ImageConfig, ref: str) -> None:
    host = host_architecture()
    if config.os != "linux" or config.architecture != host:
        raise BootkitError(
            f"{ref} is built for {config.os[:50]}/{config.architecture[:50]}, "
            f"this machine is linux/{host}",
            hint=f"use the image built for linux/{host}",
        )


def check_layers(manifest: Manifest, config: ImageConfig) -> None:
    """The manifest and the config describe the same layers, in formats bootkit reads."""
    what = f"image manifest {manifest.digest}"
    if manifest.config.digest != config.digest:
        raise BootkitError(f"{what} names config {manifest.config.digest}, not {config.digest}",
                           hint=_REBUILD)
    if not manifest.layers:
        raise BootkitError(f"{what} has no layers: there is no OS tree in it", hint=_REBUILD)
    if len(manifest.layers) != len(config.diff_ids):
        raise BootkitError(f"{what} lists {len(manifest.layers)} layers, its config "
                           f"{len(config.diff_ids)}", hint=_REBUILD)
    for i, layer in enumerate(manifest.layers):
        if layer.media_type not in LAYER_MEDIA_TYPES:
            raise BootkitError(
                f"{what}: layer {i} is of type {layer.media_type[:100]!r}, which bootkit "
                "does not read", hint="build the image with tar, gzip or zstd layers")
