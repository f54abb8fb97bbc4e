"""bootkit's OCI image layout: reading blobs and index.json bounded and checked, and pruning."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from bootkit.errors import BootkitError
from bootkit.oci.layout import ImageLayout
from bootkit.oci.manifest import digest_of

from bootkit_testing.oci import Built, write_blob, write_image

MISSING = "sha256:" + "0" * 64


def test_prepare_makes_a_layout_and_keeps_what_is_there(tmp_path: Path) -> None:
    layout = ImageLayout(tmp_path / "bootkit" / "oci")
    layout.prepare()
    assert json.loads((layout.root / "oci-layout").read_text()) == {"imageLayoutVersion": "1.0.0"}
    assert json.loads(layout.index_path.read_text()) == {"schemaVersion": 2, "manifests": []}
    assert layout.blobs.is_dir() and layout.layers_dir == layout.root / "layers"
    assert layout.layers_dir.is_dir()
    built = write_image(layout.root, "v1", [{"a": b"a"}])
    layout.prepare()
    assert layout.manifest_named("v1") == built.manifest
    assert not [p for p in layout.root.iterdir() if p.name.startswith(".")]


def test_prepare_refuses_a_symlink_for_a_directory(tmp_path: Path) -> None:
    root = tmp_path / "oci"
    (root / "blobs").mkdir(parents=True)
    (tmp_path / "elsewhere").mkdir()
    os.symlink(tmp_path / "elsewhere", root / "blobs" / "sha256")
    with pytest.raises(BootkitError, match="is not a directory"):
        ImageLayout(root).prepare()


def image(tmp_path: Path) -> tuple[ImageLayout, Built]:
    layout = ImageLayout(tmp_path / "oci")
    layout.prepare()
    return layout, write_image(layout.root, "v1", [{"usr/a": b"a" * 100}, {"etc/b": b"b"}])


def test_blob_path_takes_only_digests(tmp_path: Path) -> None:
    layout = ImageLayout(tmp_path)
    assert layout.blob_path(MISSING) == tmp_path / "blobs" / "sha256" / ("0" * 64)
    for bad in ("sha256:../../../etc/passwd", "sha256:" + "0" * 63 + "/", "0" * 64):
        with pytest.raises(BootkitError):
            layout.blob_path(bad)


def test_has_blob(tmp_path: Path) -> None:
    layout, built = image(tmp_path)
    layer = built.layers[0]
    assert layout.has_blob(layer) and not layout.has_blob(MISSING)
    layout.empty_blob(layer)
    assert layout.blob_path(layer).stat().st_size == 0 and not layout.has_blob(layer)
    os.symlink(layout.blob_path(built.config), layout.blob_path(MISSING))
    assert not layout.has_blob(MISSING)


def test_read_blob(tmp_path: Path) -> None:
    layout, built = image(tmp_path)
    data = layout.read_blob(built.manifest)
    assert digest_of(data) == built.manifest
    with pytest.raises(BootkitError, match="larger than 10 bytes"):
        layout.read_blob(built.manifest, limit=10)
    with pytest.raises(BootkitError, match="is not in the image layout"):
        layout.read_blob(MISSING)


def test_read_blob_refuses_damaged_blobs(tmp_path: Path) -> None:
    layout, built = image(tmp_path)
    path = layout.blob_path(built.config)
    path.write_bytes(path.read_bytes().replace(b"amd64", b"arm64").replace(b"linux", b"Linux"))
    with pytest.raises(BootkitError, match="does not match its digest") as err:
        layout.read_blob(built.config)
    assert err.value.hint and "fetch the image again" in err.value.hint
    layout.empty_blob(built.layers[0])
    with pytest.raises(BootkitError, match="was emptied after its import"):
        layout.read_blob(built.layers[0])


def test_read_blob_never_follows_a_symlink_or_opens_a_fifo(tmp_path: Path) -> None:
    layout, _ = image(tmp_path)
    secret = tmp_path / "secret"
    secret.write_bytes(b"secret")
    digest = digest_of(b"secret")
    os.symlink(secret, layout.blob_path(digest))
    with pytest.raises(BootkitError, match="is a symlink"):
        layout.read_blob(digest)
    fifo = digest_of(b"fifo")
    os.mkfifo(layout.blob_path(fifo))
    with pytest.raises(BootkitError, match="not a regular file"):
        layout.read_blob(fifo)


def test_manifest_named(tmp_path: Path) -> None:
    layout, built = image(tmp_path)
    v2 = write_image(layout.root, "v2", [{"x": b"x"}])
    assert layout.manifest_named("v1") == built.manifest
    assert layout.manifest_named("v2") == v2.manifest
    assert layout.manifest_named("v3") is None
    assert ImageLayout(tmp_path / "none").manifest_named("v1") is None


def write_index(layout: ImageLayout, doc: object) -> None:
    layout.index_path.write_text(doc if isinstance(doc, str) else json.dumps(doc))


def entry(digest: str, name: str | None) -> dict[str, object]:
    annotations = {"org.opencontainers.image.ref.name": name} if name else {}
    return {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": digest,
            "size": 1, "annotations": annotations}


@pytest.mark.parametrize("doc, says", [
    ("{", "not valid JSON"),
    ("[]", "not a JSON object"),
    ({"manifests": {}}, "no list of manifests"),
    ({"manifests": [entry(MISSING, "v1")] * 10001}, "no list of manifests"),
    ({"manifests": [5]}, "manifests[0] is not an object"),
    ({"manifests": [entry("sha256:../x", "v1")]}, "manifests[0].digest"),
    ({"manifests": [{**entry(MISSING, "v1"), "annotations": {"a": 1}}]}, "are not strings"),
    ({"manifests": [{**entry(MISSING, "v1"), "annotations": []}]}, "are not strings"),
    ({"manifests": [entry(MISSING, "v1"), entry(MISSING, "v1")]}, "lists 'v1' 2 times"),
    (" " * (4 << 20) + "{}", "larger than"),
])
def test_a_damaged_index_is_refused(tmp_path: Path, doc: object, says: str) -> None:
    layout, _ = image(tmp_path)
    write_index(layout, doc)
    with pytest.raises(BootkitError) as err:
        layout.manifest_named("v1")
    assert says in err.value.message and err.value.hint


def test_an_index_that_is_a_symlink_is_refused(tmp_path: Path) -> None:
    layout, _ = image(tmp_path)
    real = tmp_path / "index.json"
    os.rename(layout.index_path, real)
    os.symlink(real, layout.index_path)
    with pytest.raises(BootkitError, match="is a symlink"):
        layout.manifest_named("v1")


def test_empty_blob_and_forget_emptied(tmp_path: Path) -> None:
    layout, built = image(tmp_path)
    layer, kept = built.layers
    layout.empty_blob(layer)
    assert layout.blob_path(layer).is_file() and layout.blob_path(layer).stat().st_size == 0
    layout.forget_emptied(layer)
    assert not layout.blob_path(layer).exists()
    layout.forget_emptied(layer)  # nothing left to forget
    layout.forget_emptied(kept)  # a blob with its content stays
    assert layout.has_blob(kept)
    target = tmp_path / "target"
    target.write_bytes(b"keep me")
    os.symlink(target, layout.blob_path(layer))
    layout.forget_emptied(layer)
    assert not os.path.lexists(layout.blob_path(layer)) and target.read_bytes() == b"keep me"
    assert not [p for p in layout.blobs.iterdir() if p.name.startswith(".")]


def blob_names(layout: ImageLayout) -> set[str]:
    return {f"sha256:{name}" for name in os.listdir(layout.blobs)}


def test_remove_unused(tmp_path: Path) -> None:
    layout, v1 = image(tmp_path)
    v2 = write_image(layout.root, "v2", [{"usr/a": b"a" * 100}, {"etc/b": b"changed"}])
    assert v1.layers[0] == v2.layers[0]
    layout.empty_blob(v2.layers[0])
    # The manifest of a name kept stays even when the caller leaves it out.
    keep = {v2.config, *v2.layers}
    only_v1 = set(v1.sizes) - set(v2.sizes)
    freed = layout.remove_unused(keep, {"v2"})
    assert freed == sum(v1.sizes[d] for d in only_v1)
    assert blob_names(layout) == set(v2.sizes)
    assert layout.manifest_named("v1") is None and layout.manifest_named("v2") == v2.manifest
    assert layout.blob_path(v2.layers[0]).stat().st_size == 0
    index = json.loads(layout.index_path.read_text())
    assert [e["digest"] for e in index["manifests"]] == [v2.manifest]
    assert index["schemaVersion"] == 2
    assert layout.remove_unused(keep, {"v2"}) == 0


def test_remove_unused_drops_everything_that_is_no_blob(tmp_path: Path) -> None:
    layout, built = image(tmp_path)
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "precious").write_bytes(b"p" * 10)
    os.symlink(outside / "precious", layout.blob_path(MISSING))
    os.symlink(outside, layout.blobs / ("1" * 64))
    (layout.blobs / "subdir").mkdir()
    (layout.blobs / "subdir" / "f").write_bytes(b"f" * 7)
    (layout.blobs / ("A" * 64)).write_bytes(b"x" * 5)
    (layout.blobs / "not-a-digest").write_bytes(b"y" * 3)
    (layout.root / "oci-put-blob12345").write_bytes(b"z" * 11)
    before = layout.index_path.read_bytes()
    freed = layout.remove_unused(set(built.sizes), {"v1"})
    assert freed == 5 + 3 + 11
    assert blob_names(layout) == set(built.sizes)
    assert (outside / "precious").read_bytes() == b"p" * 10
    assert not (layout.root / "oci-put-blob12345").exists()
    assert layout.index_path.read_bytes() == before  # nothing to drop: not rewritten


def test_remove_unused_drops_unnamed_entries(tmp_path: Path) -> None:
    layout, built = image(tmp_path)
    other = write_blob(layout.root, b"{}")
    doc = json.loads(layout.index_path.read_text())
    doc["manifests"].append(entry(other, None))
    write_index(layout, doc)
    layout.remove_unused(set(built.sizes), {"v1"})
    assert [e["digest"] for e in json.loads(layout.index_path.read_text())["manifests"]] == [
        built.manifest]
    assert not layout.blob_path(other).exists()
