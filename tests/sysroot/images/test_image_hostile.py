"""Layers made to harm: each refused with a clear error, and nothing of it kept."""

from __future__ import annotations

import io
import tarfile

import pytest
from imagetrees import Images, left_in, stored_objects

from bootkit.errors import BootkitError
from bootkit.oci.layout import ImageLayout
from bootkit.oci.manifest import Descriptor
from bootkit.sysroot.images import layerscan
from bootkit.sysroot.images.layers import import_layer
from bootkit.sysroot.store import ObjectStore

from bootkit_testing.oci import Member, read_image, write_image, write_layer

# A file stored before the hostile member: its object must go with the layer.
FIRST = Member("usr/first", data=b"stored before the refusal")


def import_only(layout: ImageLayout, store: ObjectStore, layer: list[Member] | bytes,
                compression: str = "gzip") -> tuple[Descriptor, str]:
    write_image(layout.root, "t", [layer], compression=compression)
    manifest, config = read_image(layout.root, "t")
    return manifest.layers[0], config.diff_ids[0]


def assert_nothing_kept(layout: ImageLayout, store: ObjectStore, blob: Descriptor) -> None:
    assert left_in(layout) == []
    assert layout.has_blob(blob.digest)  # not emptied: nothing was imported
    store.prune()
    assert stored_objects(store) == []


@pytest.mark.parametrize("members, error", [
    ([Member("usr/../../etc/passwd")], "contains '..'"),
    ([Member("/../etc/passwd")], "contains '..'"),
    ([Member("/usr/x", "h", target="/../x")], "contains '..'"),
    ([Member("usr/x", "l", target="../../etc")], "escapes the tree"),
    ([Member("usr/d", "d"), Member("usr/h", "h", target="usr/d")], "not a regular file"),
    ([Member("usr/l", "l", target="d"), Member("usr/h", "h", target="usr/l")],
     "not a regular file"),
    ([Member("usr/h", "h", target="usr/h")], "not a regular file"),
    ([Member("usr/a"), Member("usr/a", data=b"again")], "more than once"),
    ([Member("usr/a", "d"), Member("usr/a")], "more than once"),
    ([Member("usr/a", pax={"comment": "x" * (2 << 20)})], "headers of more than 1 MiB"),
    ([Member("usr/f"), Member("usr/f/x")], "written through usr/f, which is not a directory"),
    ([Member("usr/l", "l", target="/etc"), Member("usr/l/.wh.x")], "written through usr/l"),
    ([Member("usr/d/x"), Member("usr/d", "l", target="/")], "earlier members are inside it"),
    ([Member("usr/.wh..")], "whiteout of no name"),
    ([Member("usr/a", uid=1 << 33)], "user id 8589934592 is out of range"),
    ([Member("usr/a", mtime=1e30)], "out of range"),
])
def test_a_hostile_member_is_refused_and_nothing_is_kept(
    layout: ImageLayout, store: ObjectStore, members: list[Member], error: str
) -> None:
    blob, diff_id = import_only(layout, store, [FIRST, *members])
    with pytest.raises(BootkitError, match=error):
        import_layer(layout, store, blob, diff_id, lambda n: None)
    assert_nothing_kept(layout, store, blob)


def test_a_layer_with_more_entries_than_the_limit_is_refused(
    layout: ImageLayout, store: ObjectStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(layerscan, "MAX_ENTRIES", 3)
    blob, diff_id = import_only(layout, store, [FIRST, *(Member(f"usr/{n}") for n in "abc")])
    with pytest.raises(BootkitError, match="more entries than any OS needs"):
        import_layer(layout, store, blob, diff_id, lambda n: None)
    assert_nothing_kept(layout, store, blob)


def test_a_blob_with_one_byte_changed_is_refused(layout: ImageLayout, store: ObjectStore) -> None:
    blob, diff_id = import_only(layout, store, [FIRST], compression="none")
    path = layout.blob_path(blob.digest)
    data = bytearray(path.read_bytes())
    data[data.index(b"stored before")] ^= 1
    path.write_bytes(bytes(data))
    with pytest.raises(BootkitError, match="does not have the content its digest names"):
        import_layer(layout, store, blob, diff_id, lambda n: None)
    assert_nothing_kept(layout, store, blob)


@pytest.mark.parametrize("offset", [0, 20, -20, -1])
def test_a_compressed_blob_with_one_byte_changed_is_refused(
    layout: ImageLayout, store: ObjectStore, offset: int
) -> None:
    blob, diff_id = import_only(layout, store, [FIRST])
    path = layout.blob_path(blob.digest)
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x40
    path.write_bytes(bytes(data))
    with pytest.raises(BootkitError):
        import_layer(layout, store, blob, diff_id, lambda n: None)
    assert_nothing_kept(layout, store, blob)


def test_a_layer_that_is_not_what_the_configuration_says_is_refused(
    layout: ImageLayout, store: ObjectStore
) -> None:
    blob, _ = import_only(layout, store, [FIRST])
    with pytest.raises(BootkitError, match=r"unpacks to sha256:.*, not to sha256:0000"):
        import_layer(layout, store, blob, "sha256:" + "0" * 64, lambda n: None)
    assert_nothing_kept(layout, store, blob)


@pytest.mark.parametrize("change", ["longer", "shorter"])
def test_a_blob_of_another_size_than_the_manifest_says_is_refused(
    layout: ImageLayout, store: ObjectStore, change: str
) -> None:
    blob, diff_id = import_only(layout, store, [FIRST])
    path = layout.blob_path(blob.digest)
    data = path.read_bytes()
    path.write_bytes(data + b"\0" * 100 if change == "longer" else data[:-8])
    with pytest.raises(BootkitError):
        import_layer(layout, store, blob, diff_id, lambda n: None)
    assert_nothing_kept(layout, store, blob)


def test_a_layer_with_much_after_its_end_is_refused_unread(
    layout: ImageLayout, store: ObjectStore
) -> None:
    blob, diff_id = import_only(layout, store, write_layer([FIRST]) + b"\0" * (2 << 20))
    with pytest.raises(BootkitError, match="data after its end"):
        import_layer(layout, store, blob, diff_id, lambda n: None)
    assert_nothing_kept(layout, store, blob)


def test_a_blob_that_is_not_a_tar_archive_is_refused(
    layout: ImageLayout, store: ObjectStore
) -> None:
    blob, diff_id = import_only(layout, store, b"\x01" * 4096)
    with pytest.raises(BootkitError, match="not a readable tar archive"):
        import_layer(layout, store, blob, diff_id, lambda n: None)
    assert_nothing_kept(layout, store, blob)


def test_device_nodes_and_fifos_are_skipped_and_reported(images: Images) -> None:
    dest, report = images.build([[Member("usr/lib/disk", "b"), Member("usr/lib/tty", "c"),
                                  Member("usr/lib/pipe", "p"), Member("usr/lib/x")]])
    assert sorted(report.skipped) == ["/usr/lib/disk (device node)", "/usr/lib/pipe (fifo)",
                                      "/usr/lib/tty (device node)"]
    assert sorted(p.name for p in (dest / "usr/lib").iterdir()) == ["x"]


def test_a_member_of_a_type_tar_does_not_know_is_skipped(images: Images) -> None:
    info = tarfile.TarInfo("usr/odd")
    info.type = b"Z"
    tar = write_layer([Member("usr", "d")])
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tf:
        tf.addfile(info)
    _, report = images.build([tar, out.getvalue()])
    assert report.skipped == ["/usr/odd (special file)"]
