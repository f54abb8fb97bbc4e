"""An image as the source of a deployment's tree: the same tree, digests and notes as
from any other source, with the conventions of images applied."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from imagetrees import Images, listing
from support.trees import describe_tree, rich_tree

from bootkit.errors import BootkitError
from bootkit.oci.layout import ImageLayout
from bootkit.sysroot.images.layers import layer_dir
from bootkit.sysroot.images.source import ImageSource
from bootkit.sysroot.importers import open_source
from bootkit.sysroot.store import ObjectStore

from bootkit_testing.oci import Member, image_from_tree, read_image, write_image


def test_what_a_running_system_fills_is_left_out_but_its_directories_kept(
    images: Images,
) -> None:
    dest, report = images.build([[Member(f"{top}/x/y", data=b"z") for top in
                                  ("run", "tmp", "proc", "sys", "dev", "srv")]
                                 + [Member("dev/null", "c"), Member("tmp", "d", mode=0o1777)]])
    assert listing(dest) == {"run": "d", "tmp": "d", "proc": "d", "sys": "d", "dev": "d",
                             "srv": "d", "srv/x": "d", "srv/x/y": "f:z"}
    assert (dest / "tmp").stat().st_mode & 0o7777 == 0o1777
    assert report.skipped == []


def test_dropped_top_level_names_are_not_made(images: Images) -> None:
    dest, _ = images.build([[Member("var/lib/x"), Member("var", "d"), Member("usr/a")]],
                           dropped=frozenset({"var"}))
    assert listing(dest) == {"usr": "d", "usr/a": "f:"}


def test_a_file_keeps_its_content_when_its_first_name_is_dropped(images: Images) -> None:
    dest, report = images.build([[Member("var/x", data=b"x"), Member("usr/x", "h", target="var/x")]],
                                dropped=frozenset({"var"}))
    assert listing(dest) == {"usr": "d", "usr/x": "f:x"}
    assert report.files == 1


@pytest.mark.parametrize("compression", ["gzip", "zstd"])
def test_an_image_of_a_tree_builds_the_tree_with_the_digests_of_a_directory_import(
    images: Images, tmp_path: Path, compression: str
) -> None:
    tree = rich_tree(tmp_path / "src")
    image_from_tree(tree, images.layout.root, "rich", 3, compression=compression)
    manifest, config = read_image(images.layout.root, "rich")
    assert len(manifest.layers) == 3
    source = ImageSource(images.layout, manifest, config, "oci:/x:rich")
    ours = source.import_into(tmp_path / "ours", images.store, lambda n: None, frozenset())
    theirs = open_source(tree).import_into(tmp_path / "dir", images.store, lambda n: None,
                                           frozenset())
    assert describe_tree(tmp_path / "ours") == describe_tree(tmp_path / "dir")
    assert (ours.content_digest, ours.os_digest) == (theirs.content_digest, theirs.os_digest)
    # A hardlink is one file imported, as with an archive; a directory's walk sees two.
    assert ours.files == theirs.files - 1


def test_layers_are_read_once_and_sizes_say_what_is_left_to_read(
    images: Images, tmp_path: Path
) -> None:
    layers = [[Member("usr/a", data=os.urandom(5000))], [Member("usr/b", data=b"b")]]
    source = images.source(layers)
    sizes = [blob.size for blob in source.manifest.layers]
    assert source.size() == sum(sizes)
    counted: list[int] = []
    first = source.import_into(tmp_path / "one", images.store, counted.append, frozenset())
    assert sum(counted) == sum(sizes) and source.size() == 0
    again = source.import_into(tmp_path / "two", images.store, counted.append, frozenset())
    assert sum(counted) == sum(sizes)
    assert again.digest == first.digest and listing(tmp_path / "two") == listing(tmp_path / "one")


def test_a_missing_download_counts_twice_and_is_fetched_first(
    layout: ImageLayout, store: ObjectStore, tmp_path: Path
) -> None:
    staging = tmp_path / "remote"
    write_image(staging, "v1", [[Member("usr/a", data=b"a")]])
    manifest, config = read_image(staging, "v1")
    blob = manifest.layers[0]

    def fetch(progress: object) -> None:
        data = (staging / "blobs/sha256" / blob.digest.partition(":")[2]).read_bytes()
        layout.blob_path(blob.digest).write_bytes(data)
        assert callable(progress)
        progress(len(data))

    source = ImageSource(layout, manifest, config, "docker://example.org/os:1", fetch)
    assert source.size() == 2 * blob.size
    assert source.label == "os:1" and source.origin == "docker://example.org/os:1"
    counted: list[int] = []
    source.import_into(tmp_path / "dest", store, counted.append, frozenset())
    assert sum(counted) == 2 * blob.size
    assert listing(tmp_path / "dest") == {"usr": "d", "usr/a": "f:a"}


def test_a_damaged_imported_layer_is_named_with_what_to_do(images: Images, tmp_path: Path) -> None:
    source = images.source([[Member("etc/a", data=b"a")]])
    source.import_into(tmp_path / "one", images.store, lambda n: None, frozenset())
    layer = layer_dir(images.layout, source.config.diff_ids[0])
    for obj in (layer / "objects").iterdir():
        obj.unlink()
    with pytest.raises(BootkitError, match="is damaged") as err:
        source.import_into(tmp_path / "two", images.store, lambda n: None, frozenset())
    assert err.value.hint == f"remove {layer} and pull the image again"


def test_an_image_whose_layers_and_configuration_disagree_is_refused(
    images: Images,
) -> None:
    source = images.source([[Member("usr/a")], [Member("usr/b")]])
    with pytest.raises(BootkitError, match="has 2 layers but its configuration names 1"):
        ImageSource(images.layout, source.manifest,
                    type(source.config)(source.config.digest, "amd64", "linux", {},
                                        source.config.diff_ids[:1]), "oci:/x")
