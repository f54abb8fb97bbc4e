"""Importing one layer: read once, checked against both digests, kept as a record and
store objects; the blob emptied, and read from the record from then on."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from imagetrees import left_in, stored_objects

from bootkit.errors import BootkitError
from bootkit.oci.layout import ImageLayout
from bootkit.oci.manifest import Descriptor
from bootkit.sysroot.images.layerrecord import LayerEntry, LayerRecord
from bootkit.sysroot.images.layers import import_layer, import_layers, layer_dir
from bootkit.sysroot.store import ObjectStore

from bootkit_testing.oci import Member, read_image, write_image, write_layer

MEMBERS = [
    Member("usr", "d"),
    Member("usr/bin/tool", data=b"#!/bin/sh\n", mode=0o4755, xattrs={"user.note": b"\x00\xff"}),
    Member("usr/bin/again", "h", target="usr/bin/tool"),
    Member("usr/lib/link", "l", target="../bin/tool"),
    Member("usr/dev/null", "c"),
    Member("usr/gone", "whiteout"),
    Member("etc", "opaque"),
    Member("usr/big", data=os.urandom(3 << 19)),  # over what is hashed in memory
]


def one_layer(layout: ImageLayout, members: list[Member], compression: str = "gzip"
              ) -> tuple[Descriptor, str]:
    write_image(layout.root, "t", [members], compression=compression)
    manifest, config = read_image(layout.root, "t")
    return manifest.layers[0], config.diff_ids[0]


@pytest.mark.parametrize("compression", ["gzip", "zstd", "none"])
def test_a_layer_becomes_a_record_and_objects_and_its_blob_is_emptied(
    layout: ImageLayout, store: ObjectStore, compression: str
) -> None:
    blob, diff_id = one_layer(layout, MEMBERS, compression)
    counted: list[int] = []
    record = import_layer(layout, store, blob, diff_id, counted.append)
    assert sum(counted) == blob.size
    assert [(e.path, e.kind) for e in record.entries] == [
        ("usr", "d"), ("usr/bin/tool", "f"), ("usr/bin/again", "h"), ("usr/lib/link", "l"),
        ("usr/dev/null", "s"), ("usr/big", "f")]
    tool = record.entries[1]
    assert (tool.mode, tool.size, tool.xattrs) == (0o4755, 10, (("user.note", b"\x00\xff"),))
    assert (record.whiteouts, record.opaque) == (("usr/gone",), ("etc",))
    assert LayerRecord.load(layer_dir(layout, diff_id) / "record") == record
    assert len(os.listdir(layer_dir(layout, diff_id) / "objects")) == 2
    assert len(stored_objects(store)) == 2
    assert layout.blob_path(blob.digest).stat().st_size == 0
    assert left_in(layout) == [diff_id.partition(":")[2]]


def test_a_kept_record_is_loaded_and_the_layer_never_read_again(
    layout: ImageLayout, store: ObjectStore
) -> None:
    blob, diff_id = one_layer(layout, MEMBERS)
    first = import_layer(layout, store, blob, diff_id, lambda n: None)
    assert not layout.has_blob(blob.digest)
    counted: list[int] = []
    assert import_layer(layout, store, blob, diff_id, counted.append) == first
    assert counted == []
    # Downloaded again anyway: still not read, and emptied once more.
    layout.blob_path(blob.digest).write_bytes(b"not even a tar archive")
    assert import_layer(layout, store, blob, diff_id, counted.append) == first
    assert counted == [] and not layout.has_blob(blob.digest)


def test_the_same_file_in_two_layers_is_stored_once(
    layout: ImageLayout, store: ObjectStore
) -> None:
    write_image(layout.root, "t", [[Member("usr/a", data=b"same")],
                                   [Member("usr/b", data=b"same"), Member("usr/c", data=b"same")]])
    manifest, config = read_image(layout.root, "t")
    for blob, diff_id in zip(manifest.layers, config.diff_ids, strict=True):
        import_layer(layout, store, blob, diff_id, lambda n: None)
    objects = [next((layer_dir(layout, d) / "objects").iterdir()) for d in config.diff_ids]
    assert objects[0].stat().st_ino == objects[1].stat().st_ino
    assert len(stored_objects(store)) == 1


def test_a_damaged_record_is_made_again_while_the_blob_is_there(
    layout: ImageLayout, store: ObjectStore
) -> None:
    blob, diff_id = one_layer(layout, MEMBERS)
    data = layout.blob_path(blob.digest).read_bytes()
    good = import_layer(layout, store, blob, diff_id, lambda n: None)
    record = layer_dir(layout, diff_id) / "record"
    record.write_text(record.read_text()[:-10])
    layout.blob_path(blob.digest).write_bytes(data)
    assert import_layer(layout, store, blob, diff_id, lambda n: None) == good
    assert LayerRecord.load(record) == good


def test_a_damaged_record_without_its_blob_asks_for_a_pull(
    layout: ImageLayout, store: ObjectStore
) -> None:
    blob, diff_id = one_layer(layout, MEMBERS)
    import_layer(layout, store, blob, diff_id, lambda n: None)
    (layer_dir(layout, diff_id) / "record").write_text("{}")
    with pytest.raises(BootkitError, match="no longer kept") as err:
        import_layer(layout, store, blob, diff_id, lambda n: None)
    assert err.value.hint is not None and "pull the image again" in err.value.hint


def test_a_layer_neither_imported_nor_downloaded_asks_for_a_pull(
    layout: ImageLayout, store: ObjectStore
) -> None:
    blob, diff_id = one_layer(layout, MEMBERS)
    layout.blob_path(blob.digest).unlink()
    with pytest.raises(BootkitError, match="neither imported nor downloaded"):
        import_layer(layout, store, blob, diff_id, lambda n: None)
    assert left_in(layout) == []


def test_an_import_a_crash_interrupted_is_cleared_away(
    layout: ImageLayout, store: ObjectStore
) -> None:
    blob, diff_id = one_layer(layout, MEMBERS)
    leftover = layout.layers_dir / f".{diff_id.partition(':')[2]}.0123456789abcdef"
    (leftover / "objects").mkdir(parents=True)
    import_layer(layout, store, blob, diff_id, lambda n: None)
    assert left_in(layout) == [diff_id.partition(":")[2]]


def test_a_special_file_of_unknown_type_is_recorded_as_skipped(tmp_path: Path) -> None:
    entry = LayerEntry("usr/x", "s", 0o644, 0, 0, 0.0, (), target="")
    LayerRecord("sha256:" + "1" * 64, (entry,), (), ()).save(tmp_path / "r")
    assert LayerRecord.load(tmp_path / "r").entries == (entry,)


def test_a_layer_dir_that_is_not_a_directory_is_replaced_while_the_blob_is_there(
    layout: ImageLayout, store: ObjectStore
) -> None:
    blob, diff_id = one_layer(layout, MEMBERS)
    layer_dir(layout, diff_id).write_text("in the way")
    assert import_layer(layout, store, blob, diff_id, lambda n: None).diff_id == diff_id
    assert (layer_dir(layout, diff_id) / "record").is_file()


def test_an_empty_layer_is_an_empty_record(layout: ImageLayout, store: ObjectStore) -> None:
    blob, diff_id = one_layer(layout, [])
    assert import_layer(layout, store, blob, diff_id, lambda n: None) == LayerRecord(
        diff_id, (), (), ())


def test_names_from_the_root_are_read_as_umoci_writes_them(
    layout: ImageLayout, store: ObjectStore
) -> None:
    """umoci names the root "/" and its members "/usr/...": relative to the image's root."""
    blob, diff_id = one_layer(layout, [
        Member("/", "d", mode=0o755), Member("/usr", "d"), Member("/usr/x", data=b"x"),
        Member("/usr/y", "h", target="/usr/x"),
    ])
    record = import_layer(layout, store, blob, diff_id, lambda n: None)
    assert [(e.path, e.kind, e.target) for e in record.entries] == [
        (".", "d", ""), ("usr", "d", ""), ("usr/x", "f", ""), ("usr/y", "h", "usr/x")]


def test_a_layer_that_stops_after_its_last_file_data_is_read_as_umoci_writes_it(
    layout: ImageLayout, store: ObjectStore
) -> None:
    """No padding after the last file and no end-of-archive blocks (umoci 0.4.7)."""
    whole = write_layer([Member("usr", "d"), Member("usr/a", data=b"abc")])
    cut = whole[: 512 * 2 + 3]  # the two headers, then the file's three bytes
    write_image(layout.root, "t", [cut])
    manifest, config = read_image(layout.root, "t")
    record = import_layer(layout, store, manifest.layers[0], config.diff_ids[0], lambda n: None)
    assert [(e.path, e.size) for e in record.entries] == [("usr", 0), ("usr/a", 3)]


def test_a_layer_cut_short_inside_a_file_is_refused(
    layout: ImageLayout, store: ObjectStore
) -> None:
    whole = write_layer([Member("usr", "d"), Member("usr/a", data=b"x" * 1000)])
    write_image(layout.root, "t", [whole[: 512 * 2 + 500]])
    manifest, config = read_image(layout.root, "t")
    with pytest.raises(BootkitError, match="not a readable tar archive"):
        import_layer(layout, store, manifest.layers[0], config.diff_ids[0], lambda n: None)
    assert left_in(layout) == []


def test_new_layers_are_kept_all_or_none(layout: ImageLayout, store: ObjectStore) -> None:
    """A bad second layer leaves nothing of the first, which was scanned in the same go."""
    write_image(layout.root, "t", [[Member("usr/a", data=b"a")], [Member("usr/b", data=b"b")]])
    manifest, config = read_image(layout.root, "t")
    bad = layout.blob_path(manifest.layers[1].digest)
    bad.write_bytes(bad.read_bytes()[:-5])
    with pytest.raises(BootkitError):
        import_layers(layout, store, list(zip(manifest.layers, config.diff_ids, strict=True)),
                      lambda n: None)
    assert left_in(layout) == []
    assert layout.has_blob(manifest.layers[0].digest)  # not emptied: not imported


def test_a_layer_an_image_holds_twice_is_read_once(layout: ImageLayout,
                                                   store: ObjectStore) -> None:
    same = [Member("usr/a", data=b"a")]
    write_image(layout.root, "t", [same, same])
    manifest, config = read_image(layout.root, "t")
    counted: list[int] = []
    first, second = import_layers(layout, store, list(zip(manifest.layers, config.diff_ids,
                                                          strict=True)), counted.append)
    assert first == second and sum(counted) == manifest.layers[0].size
    assert left_in(layout) == [config.diff_ids[0].partition(":")[2]]
