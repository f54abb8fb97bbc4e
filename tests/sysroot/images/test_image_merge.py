"""The OCI rules by which an image's layers make one tree, each on the tree it builds."""

from __future__ import annotations

import os
import stat

import pytest
from imagetrees import Images

from bootkit.errors import BootkitError
from bootkit.sysroot.images.layerrecord import LayerEntry, LayerRecord
from bootkit.sysroot.images.merge import merge

from bootkit_testing.oci import Member


def test_a_whiteout_removes_a_file_of_a_lower_layer(images: Images) -> None:
    tree = images.tree([Member("usr/a", data=b"a"), Member("usr/b", data=b"b")],
                       [Member("usr/a", "whiteout")])
    assert tree == {"usr": "d", "usr/b": "f:b"}


def test_a_whiteout_of_a_directory_removes_its_subtree(images: Images) -> None:
    tree = images.tree([Member("usr/share/doc/x/y", data=b"y"), Member("usr/share/z")],
                       [Member("usr/share/doc", "whiteout")])
    assert tree == {"usr": "d", "usr/share": "d", "usr/share/z": "f:"}


@pytest.mark.parametrize("marker_first", [True, False])
def test_an_opaque_directory_keeps_only_its_own_layers_children(
    images: Images, marker_first: bool
) -> None:
    own = [Member("etc/conf.d", "d"), Member("etc/conf.d/c", data=b"new")]
    marker = Member("etc/conf.d", "opaque")
    upper = [marker, *own] if marker_first else [*own, marker]
    tree = images.tree([Member("etc/conf.d/a"), Member("etc/conf.d/b/deep"), Member("etc/x")],
                       upper)
    assert tree == {"etc": "d", "etc/conf.d": "d", "etc/conf.d/c": "f:new", "etc/x": "f:"}


@pytest.mark.parametrize("whiteout_first", [True, False])
def test_a_whiteout_never_removes_from_its_own_layer(
    images: Images, whiteout_first: bool
) -> None:
    new, whiteout = Member("usr/x", data=b"new"), Member("usr/x", "whiteout")
    upper = [whiteout, new] if whiteout_first else [new, whiteout]
    assert images.tree([Member("usr/x", data=b"old")], upper)["usr/x"] == "f:new"


def test_a_directory_over_a_directory_keeps_its_children_and_takes_the_new_metadata(
    images: Images,
) -> None:
    dest, _ = images.build([[Member("usr/lib", "d", mode=0o700, uid=5), Member("usr/lib/a")],
                            [Member("usr/lib", "d", mode=0o750, uid=7), Member("usr/lib/b")]])
    assert sorted(os.listdir(dest / "usr/lib")) == ["a", "b"]
    st = (dest / "usr/lib").lstat()
    assert stat.S_IMODE(st.st_mode) == 0o750
    if os.geteuid() == 0:
        assert st.st_uid == 7


def test_a_file_replaces_a_directory_and_a_directory_the_file(images: Images) -> None:
    layers = [[Member("usr/thing/old", data=b"1")], [Member("usr/thing", data=b"file")]]
    assert images.tree(*layers)["usr/thing"] == "f:file"
    tree = images.tree(*layers, [Member("usr/thing", "d"), Member("usr/thing/new")])
    assert {k: v for k, v in tree.items() if k.startswith("usr/thing")} == {
        "usr/thing": "d", "usr/thing/new": "f:"}


def test_a_symlink_replaces_a_directory_and_all_below_it(images: Images) -> None:
    tree = images.tree([Member("usr/lib64/x"), Member("usr/lib/y")],
                       [Member("usr/lib64", "l", target="lib")])
    assert tree == {"usr": "d", "usr/lib": "d", "usr/lib/y": "f:", "usr/lib64": "l:lib"}


def test_a_hardlink_to_a_lower_layers_file_keeps_it_when_the_name_is_replaced(
    images: Images,
) -> None:
    lower = [Member("etc/a", data=b"one")]
    link = [Member("etc/b", "h", target="etc/a")]
    dest, _ = images.build([lower, link])
    assert (dest / "etc/b").read_bytes() == b"one"
    assert (dest / "etc/a").stat().st_ino == (dest / "etc/b").stat().st_ino
    tree = images.tree(lower, link, [Member("etc/a", data=b"two")])
    assert (tree["etc/a"], tree["etc/b"]) == ("f:two", "f:one")


def test_a_hardlink_to_a_file_of_its_own_layer(images: Images) -> None:
    dest, report = images.build([[Member("etc/a", data=b"same", mode=0o600),
                                  Member("etc/b", "h", target="etc/a"),
                                  Member("etc/c", "h", target="etc/b")]])
    inodes = {(dest / "etc" / n).stat().st_ino for n in "abc"}
    assert len(inodes) == 1 and stat.S_IMODE((dest / "etc/c").stat().st_mode) == 0o600
    assert report.files == 1


def test_other_whiteout_meta_names_are_ignored(images: Images) -> None:
    tree = images.tree([Member("usr/a")], [Member("usr/.wh..wh.plnk", data=b"x"),
                                           Member("usr/.wh..wh.aufs", "d")])
    assert tree == {"usr": "d", "usr/a": "f:"}


def test_a_whiteout_of_what_is_not_there_changes_nothing(images: Images) -> None:
    tree = images.tree([Member("usr/a", data=b"a"), Member("usr/l", "l", target="a")],
                       [Member("usr/missing", "whiteout"), Member("usr/a/below", "whiteout"),
                        Member("usr/l/below", "whiteout"), Member("opt/x", "whiteout")])
    assert tree == {"usr": "d", "usr/a": "f:a", "usr/l": "l:a"}


def test_missing_parents_are_made_as_root_owned_0755_directories(images: Images) -> None:
    dest, _ = images.build([[Member("usr/share/x", data=b"x")]])
    for rel in ("usr", "usr/share"):
        st = (dest / rel).lstat()
        assert stat.S_ISDIR(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o755
        assert (st.st_uid, st.st_gid) == ((0, 0) if os.geteuid() == 0 else (st.st_uid, st.st_gid))


@pytest.mark.parametrize("lower", [Member("usr/lib64", "l", target="lib"),
                                   Member("usr/lib64", data=b"a file")])
def test_a_layer_never_writes_through_what_is_not_a_directory_below_it(
    images: Images, lower: Member
) -> None:
    with pytest.raises(BootkitError, match=r"'usr/lib64/evil' below 'usr/lib64'"):
        images.build([[Member("usr/lib", "d"), lower], [Member("usr/lib64/evil", data=b"x")]])


def test_a_hardlink_to_nothing_is_refused(images: Images) -> None:
    with pytest.raises(BootkitError, match="no regular file"):
        images.build([[Member("usr/a")], [Member("usr/b", "h", target="usr/nothing")]])
    with pytest.raises(BootkitError, match="no regular file"):
        images.build([[Member("usr/d", "d")], [Member("usr/b", "h", target="usr/d")]])


def _entry(path: str, kind: str = "d", **more: object) -> LayerEntry:
    return LayerEntry(path, kind, 0o755, 0, 0, 0.0, (), **more)  # type: ignore[arg-type]


def test_merged_entries_come_parents_first_in_name_order_as_a_walk_gives_them() -> None:
    record = LayerRecord("sha256:" + "0" * 64,
                         (_entry("a-b"), _entry("a/z"), _entry("a/b/c"), _entry("a.b")), (), ())
    assert [m.path for m in merge([record])] == [".", "a", "a/b", "a/b/c", "a/z", "a-b", "a.b"]


def test_names_written_with_a_leading_dot_slash_are_the_same_names(images: Images) -> None:
    tree = images.tree([Member("./usr/a", data=b"a"), Member("./usr/b")],
                       [Member("./usr/a", "whiteout"), Member("./usr", "opaque"),
                        Member("./usr/c", data=b"c")])
    assert tree == {"usr": "d", "usr/c": "f:c"}
