"""Manifests, indexes and configs read from hostile bytes."""

from __future__ import annotations

import contextlib
import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bootkit.errors import BootkitError
from bootkit.oci import manifest as m
from bootkit.oci.manifest import (
    Index,
    Manifest,
    check_architecture,
    check_bootable,
    check_digest,
    check_layers,
    digest_of,
    host_architecture,
    parse_config,
    parse_manifest_or_index,
)

from bootkit_testing.oci import CONFIG_TYPE, LAYER_TYPES, MANIFEST_TYPE, canonical, config_doc

D1, D2, D3 = ("sha256:" + c * 64 for c in "123")
GZIP_LAYER = LAYER_TYPES["gzip"]


def manifest_doc(**changes: Any) -> dict[str, Any]:
    doc = {
        "schemaVersion": 2, "mediaType": MANIFEST_TYPE,
        "config": {"mediaType": CONFIG_TYPE, "digest": D1, "size": 100},
        "layers": [{"mediaType": GZIP_LAYER, "digest": D2, "size": 2000},
                   {"mediaType": "application/vnd.oci.image.layer.v1.tar+zstd", "digest": D3,
                    "size": 0}],
    }
    doc.update(changes)
    return {k: v for k, v in doc.items() if v is not None}


def parse(doc: Any) -> Manifest | Index:
    raw = doc if isinstance(doc, bytes) else canonical(doc)
    return parse_manifest_or_index(raw, digest_of(raw))


def entry(arch: str, os: str = "linux", media_type: str = MANIFEST_TYPE,
          digest: str = D1) -> dict[str, Any]:
    return {"mediaType": media_type, "digest": digest, "size": 5,
            "platform": {"architecture": arch, "os": os}}


def test_oci_manifest() -> None:
    result = parse(manifest_doc())
    assert isinstance(result, Manifest)
    assert result.config == m.Descriptor(CONFIG_TYPE, D1, 100)
    assert [layer.digest for layer in result.layers] == [D2, D3]
    assert result.raw == canonical(manifest_doc())


def test_oci_manifest_without_media_type_is_told_by_shape() -> None:
    assert isinstance(parse(manifest_doc(mediaType=None)), Manifest)
    index = parse({"schemaVersion": 2, "manifests": [entry("amd64")]})
    assert isinstance(index, Index)


def test_docker_schema2_manifest_and_list() -> None:
    doc = manifest_doc(mediaType=m.DOCKER_MANIFEST, config={
        "mediaType": m.DOCKER_CONFIG, "digest": D1, "size": 7})
    assert isinstance(parse(doc), Manifest)
    listed = parse({"schemaVersion": 2, "mediaType": m.DOCKER_LIST,
                    "manifests": [entry("arm64", media_type=m.DOCKER_MANIFEST)]})
    assert isinstance(listed, Index)
    assert listed.choose("arm64").media_type == m.DOCKER_MANIFEST


def test_index_chooses_linux_on_the_architecture() -> None:
    index = parse({"schemaVersion": 2, "manifests": [
        entry("amd64", os="windows", digest=D1),
        entry("unknown", os="unknown", digest=D2),
        entry("amd64", media_type=CONFIG_TYPE, digest=D2),  # not an image manifest
        entry("amd64", digest=D3),
        entry("arm64", digest=D2),
    ]})
    assert isinstance(index, Index)
    assert index.choose("amd64").digest == D3
    assert index.choose("arm64").digest == D2
    with pytest.raises(BootkitError, match=r"no image for linux/s390x.*linux/amd64"):
        index.choose("s390x")


@pytest.mark.parametrize("doc, says", [
    ({"schemaVersion": 1, "name": "x", "fsLayers": []}, "schema 1"),
    ({"schemaVersion": 2, "mediaType": "application/vnd.docker.distribution.manifest.v1+prettyjws"},
     "schema 1"),
    (manifest_doc(schemaVersion=3), "schemaVersion is not 2"),
    (manifest_doc(schemaVersion=True), "schemaVersion is not 2"),
    (manifest_doc(mediaType="text/plain"), "is not an image manifest"),
    (manifest_doc(mediaType=None, manifests=[]), "neither a manifest nor an index"),
    ({"schemaVersion": 2}, "neither a manifest nor an index"),
    (manifest_doc(config={"mediaType": "application/vnd.cncf.helm.config.v1+json",
                          "digest": D1, "size": 1}), "not a container image"),
    (manifest_doc(config=None), "config is not an object"),
    (manifest_doc(layers={}), "layers is not a list"),
    (manifest_doc(layers=[{"mediaType": GZIP_LAYER, "digest": D2, "size": 1}] * 501),
     "more than 500"),
    (manifest_doc(layers=[{"mediaType": GZIP_LAYER, "digest": D2, "size": -1}]),
     "layers[0].size is not a non-negative integer"),
    (manifest_doc(layers=[{"mediaType": GZIP_LAYER, "digest": D2, "size": 1.5}]),
     "size is not"),
    (manifest_doc(layers=[{"mediaType": GZIP_LAYER, "digest": D2, "size": True}]),
     "size is not"),
    (manifest_doc(layers=[{"mediaType": GZIP_LAYER, "digest": D2, "size": 1 << 60}]),
     "size is not"),
    (manifest_doc(layers=[{"mediaType": GZIP_LAYER, "digest": "sha256:" + "A" * 64,
                           "size": 1}]), "layers[0].digest"),
    (manifest_doc(layers=[{"mediaType": GZIP_LAYER, "digest": "sha512:" + "a" * 128,
                           "size": 1}]), "not a sha256 digest"),
    (manifest_doc(layers=[{"mediaType": 5, "digest": D2, "size": 1}]), "mediaType is not a string"),
    ({"schemaVersion": 2, "manifests": [entry("amd64")] * 1001}, "more than 1000"),
    ({"schemaVersion": 2, "manifests": [{**entry("amd64"), "platform": []}]}, "platform is not"),
    ([1, 2], "is not an object"),
    (b"\xff\xfe", "not valid JSON"),
    (b'{"schemaVersion": 2, "schemaVersion": 2}', "not valid JSON"),
    (b'{"schemaVersion": NaN}', "not valid JSON"),
    (b"[" * 100000 + b"]" * 100000, "not valid JSON"),
    (b'{"size": ' + b"9" * 5000 + b"}", "not valid JSON"),
    (b" " * (m.MAX_JSON + 1), "larger than"),
])
def test_refused_manifests(doc: Any, says: str) -> None:
    with pytest.raises(BootkitError) as err:
        parse(doc)
    assert says in err.value.message
    assert "sha256:" in err.value.message  # names the image
    assert err.value.hint


def test_content_must_match_its_digest() -> None:
    with pytest.raises(BootkitError, match="does not match its digest"):
        parse_manifest_or_index(canonical(manifest_doc()), D1)
    with pytest.raises(BootkitError, match="not a sha256 digest"):
        parse_manifest_or_index(canonical(manifest_doc()), "md5:abc")


def config_raw(**changes: Any) -> bytes:
    doc = config_doc([D2, D3], {"containers.bootc": "1",
                                "org.opencontainers.image.version": "41.2"}, "amd64")
    doc.update(changes)
    return canonical(doc)


def test_config() -> None:
    raw = config_raw()
    config = parse_config(raw, digest_of(raw))
    assert config.digest == digest_of(raw)
    assert (config.architecture, config.os) == ("amd64", "linux")
    assert config.diff_ids == (D2, D3)
    assert config.labels["containers.bootc"] == "1"
    assert config.version == "41.2"


@pytest.mark.parametrize("changes", [{"config": None}, {"config": {"Labels": None}},
                                     {"config": {}}])
def test_config_without_labels(changes: dict[str, Any]) -> None:
    raw = config_raw(**changes)
    config = parse_config(raw, digest_of(raw))
    assert config.labels == {} and config.version is None


@pytest.mark.parametrize("changes, says", [
    ({"rootfs": {"type": "layers"}}, "diff_ids is not a list"),
    ({"rootfs": {"type": "other", "diff_ids": []}}, "rootfs.type"),
    ({"rootfs": None}, "rootfs is not an object"),
    ({"rootfs": {"type": "layers", "diff_ids": ["sha256:xyz"]}}, "diff_ids[0]"),
    ({"rootfs": {"type": "layers", "diff_ids": [D1] * 501}}, "more than 500"),
    ({"architecture": 5}, "architecture is not a string"),
    ({"os": None}, "os is not a string"),
    ({"config": {"Labels": {"a": 1}}}, "label 'a'"),
    ({"config": {"Labels": ["a"]}}, "Labels is not an object"),
    ({"config": {"Labels": {str(i): "" for i in range(4097)}}}, "more than 4096"),
    ({"config": {"Labels": {"a": "x" * 70000}}}, "reasonable length"),
])
def test_refused_configs(changes: dict[str, Any], says: str) -> None:
    raw = config_raw(**changes)
    with pytest.raises(BootkitError) as err:
        parse_config(raw, digest_of(raw))
    assert says in err.value.message and "image config sha256:" in err.value.message


def test_check_digest() -> None:
    assert check_digest(D1, "x") == D1
    for bad in (None, 5, "sha256:" + "a" * 63, "sha256:" + "a" * 65, " " + D1, D1 + "\n"):
        with pytest.raises(BootkitError, match="what: "):
            check_digest(bad, "what")


def image_config(labels: dict[str, str], arch: str = "amd64", os: str = "linux",
                 diff_ids: tuple[str, ...] = (D2, D3)) -> m.ImageConfig:
    return m.ImageConfig(D1, arch, os, labels, diff_ids)


@pytest.mark.parametrize("labels", [{"containers.bootc": "1"}, {"ostree.bootable": "true"},
                                    {"ostree.bootable": "1"}, {"containers.bootc": "True"}])
def test_bootable(labels: dict[str, str]) -> None:
    check_bootable(image_config(labels), "docker://q.io/os:1")


@pytest.mark.parametrize("labels", [{}, {"containers.bootc": "0"}, {"ostree.bootable": "false"},
                                    {"ostree.bootable": ""}, {"bootable": "1"}])
def test_not_bootable(labels: dict[str, str]) -> None:
    with pytest.raises(BootkitError, match=r"docker://q.io/os:1 is not a bootable") as err:
        check_bootable(image_config(labels), "docker://q.io/os:1")
    assert err.value.hint and "containers.bootc=1" in err.value.hint


def test_architecture(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(m.platform, "machine", lambda: "aarch64")
    assert host_architecture() == "arm64"
    check_architecture(image_config({}, arch="arm64"), "ref")
    with pytest.raises(BootkitError, match="built for linux/amd64, this machine is linux/arm64"):
        check_architecture(image_config({}, arch="amd64"), "ref")
    with pytest.raises(BootkitError, match="windows/arm64"):
        check_architecture(image_config({}, arch="arm64", os="windows"), "ref")
    monkeypatch.setattr(m.platform, "machine", lambda: "x86_64")
    assert host_architecture() == "amd64"


def parsed_manifest(**changes: Any) -> Manifest:
    result = parse(manifest_doc(**changes))
    assert isinstance(result, Manifest)
    return result


def test_check_layers() -> None:
    check_layers(parsed_manifest(), image_config({}))
    with pytest.raises(BootkitError, match="lists 2 layers, its config 1"):
        check_layers(parsed_manifest(), image_config({}, diff_ids=(D2,)))
    with pytest.raises(BootkitError, match="names config"):
        check_layers(parsed_manifest(config={"mediaType": CONFIG_TYPE, "digest": D2, "size": 1}),
                     image_config({}))
    with pytest.raises(BootkitError, match="no layers"):
        check_layers(parsed_manifest(layers=[]), image_config({}, diff_ids=()))
    foreign = "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip"
    with pytest.raises(BootkitError, match="layer 1 is of type") as err:
        check_layers(parsed_manifest(layers=[
            {"mediaType": m.DOCKER_MANIFEST.replace("distribution.manifest.v2+json",
                                                    "image.rootfs.diff.tar.gzip"),
             "digest": D2, "size": 1},
            {"mediaType": foreign, "digest": D3, "size": 1}]), image_config({}))
    assert foreign in err.value.message


def test_docker_manifests_parse_with_their_own_json_layout() -> None:
    raw = json.dumps(manifest_doc(), indent=3).encode()
    result = parse_manifest_or_index(raw, digest_of(raw))
    assert isinstance(result, Manifest) and result.raw == raw


_JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-2, 1 << 54) | st.sampled_from(
        [D1, MANIFEST_TYPE, CONFIG_TYPE, GZIP_LAYER, m.DOCKER_LIST, "linux", "amd64", "layers"]),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.sampled_from(
        ["schemaVersion", "mediaType", "config", "layers", "manifests", "digest", "size",
         "platform", "os", "architecture", "rootfs", "type", "diff_ids", "Labels"]), inner,
        max_size=5),
    max_leaves=20)


@settings(max_examples=200, deadline=None)
@given(_JSON)
def test_any_document_is_refused_or_read(doc: Any) -> None:
    raw = canonical(doc)
    for read in (parse_manifest_or_index, parse_config):
        with contextlib.suppress(BootkitError):
            read(raw, digest_of(raw))
