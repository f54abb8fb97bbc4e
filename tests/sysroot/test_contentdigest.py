"""A deployment's content digest: the same tree in gives the same digest out, whatever the
source; and metadata older than the digests still loads."""

from __future__ import annotations

import json
import subprocess
import tarfile
from pathlib import Path

import pytest
from support.helpers import deploy_tree, init_sysroot, make_tree, ok
from support.trees import rich_tree

from bootkit.records.deployment import Deployment
from bootkit.sysroot.layout import Sysroot


def _gnu_tar(src: Path, out: Path) -> Path:
    subprocess.run(["tar", "-C", str(src), "--numeric-owner", "-cf", str(out), "."],
                   check=True, capture_output=True)
    return out


def _reversed_tar(src: Path, out: Path) -> Path:
    """Members in reverse order: children before their directories, links before files."""
    paths = sorted(p for p in src.rglob("*") if not p.is_fifo())
    with tarfile.open(out, "w") as tf:
        # tarfile notes a hardlink for the second path of an inode it adds.
        for path in reversed(paths):
            tf.add(path, arcname=str(path.relative_to(src)), recursive=False)
    return out


@pytest.fixture
def source(tmp_path: Path) -> Path:
    tree = rich_tree(tmp_path / "src")
    # A deployable tree keeps its /etc defaults in one place: usr/etc here.
    for path in (tree / "etc").iterdir():
        path.rename(tree / "usr/etc" / path.name)
    (tree / "etc").rmdir()
    return tree


def _deployed(tmp_path: Path, name: str, source: Path) -> Deployment:
    sr = init_sysroot(tmp_path / name)
    return deploy_tree(sr, source)


def test_the_same_tree_gives_the_same_digest_from_any_source(tmp_path: Path, source: Path) -> None:
    assert (source / "usr/bin/hello").stat().st_nlink == 2  # a hardlink pair
    from_dir = _deployed(tmp_path, "a", source)
    from_tar = _deployed(tmp_path, "b", _gnu_tar(source, tmp_path / "tree.tar"))
    from_reversed = _deployed(tmp_path, "c", _reversed_tar(source, tmp_path / "reversed.tar"))
    digests = {(d.content_digest, d.os_digest) for d in (from_dir, from_tar, from_reversed)}
    assert len(digests) == 1 and all(len(x) == 64 for x in digests.pop())
    # The id's digest notes hardlinks and member order as the source has them.
    assert from_dir.id.split("-")[1] != from_reversed.id.split("-")[1]


def test_another_tree_gives_another_digest(tmp_path: Path, source: Path) -> None:
    first = _deployed(tmp_path, "a", source)
    (source / "usr/share/secret").write_text("s3cret!\n")
    second = _deployed(tmp_path, "b", source)
    assert first.content_digest != second.content_digest
    assert first.os_digest != second.os_digest
    (source / "usr/etc/only-in-etc").write_text("x\n")
    third = _deployed(tmp_path, "c", source)
    # /etc is in the content digest, not in what fsck checks a tree against.
    assert (third.content_digest != second.content_digest, third.os_digest) == (
        True, second.os_digest
    )


def test_status_shows_the_content_digest(tmp_path: Path) -> None:
    sysroot = tmp_path / "sys"
    init_sysroot(sysroot)
    tree = make_tree(tmp_path / "tree")
    first = json.loads(ok("deploy", "--sysroot", sysroot, tree, "--json").stdout)
    second = json.loads(ok("deploy", "--sysroot", sysroot, tree, "--json").stdout)
    rows = json.loads(ok("status", "--sysroot", sysroot, "--json").stdout)["deployments"]
    assert {r["content_digest"] for r in rows} == {first["content_digest"]}
    assert first["id"] != second["id"]


def test_metadata_older_than_the_new_fields_still_loads(tmp_path: Path) -> None:
    sysroot = tmp_path / "sys"
    sr = init_sysroot(sysroot)
    dep = deploy_tree(sr, make_tree(tmp_path / "tree"))
    data = json.loads(dep.to_json())
    for key in ("content_digest", "os_digest", "payload_files"):
        del data[key]
    data["a_field_from_the_future"] = 1
    Sysroot(sysroot).metadata_path(dep.os, dep.id).write_text(json.dumps(data))
    rows = json.loads(ok("status", "--sysroot", sysroot, "--json").stdout)["deployments"]
    assert rows[0]["id"] == dep.id and rows[0]["content_digest"] is None
    ok("bootloader", "update", "--sysroot", sysroot)
    assert ok("fsck", "--sysroot", sysroot).stdout.endswith("No problems found.\n")


def test_both_digests_are_the_two_digests_made_apart() -> None:
    """One pass over the notes gives what content_digest and os_digest give."""
    from bootkit.sysroot.contentdigest import both_digests, content_digest, os_digest

    notes = [
        ".\0d755:0:0\n",
        "etc\0d755:0:0\n",
        "etc/a\0fAAA:644:0:0\n",
        "usr\0d755:0:0\n",
        "usr/etc\0d755:0:0\n",
        "usr/etc/b\0fBBB:644:0:0\n",
        "usr/share/b\0husr/etc/b\n",  # kept, though its target is left out
        "usr/share/c\0husr/share/b\n",
        "usr/lib\0lshare\n",
        "var\0d755:0:0\n",
        "var/x\0fCCC:644:0:0\n",
        "etcetera\0d700:0:0\n",
    ]
    both = both_digests(notes)
    assert both == (content_digest(notes), os_digest(notes))
    assert both_digests(notes[:-1]) != both


# Notes with what makes a digest hard: hardlinks (one to a path left out, one to another
# link), a symlink target with a newline, names that are not UTF-8 or sort apart from
# their neighbours, and a name that starts like a left-out one.
PINNED_NOTES = [
    ".\0d755:0:0\n",
    "etc\0d755:0:0\n",
    "etc/a\0fAAA:644:0:0\n",
    "usr\0d755:0:0\n",
    "usr/etc\0d755:0:0\n",
    "usr/etc/b\0fBBB:644:0:0\n",
    "usr/share/b\0husr/etc/b\n",
    "usr/share/c\0husr/share/b\n",
    "usr/lib\0lshare\n",
    "usr/lib-x\0lline\nbreak\n",
    "usr/l\udcffb\0fDDD:600:1:2\n",
    "usr/l\u00e9b\0fEEE:600:1:2\n",
    "var\0d755:0:0\n",
    "var/x\0fCCC:644:0:0\n",
    "etcetera\0d700:0:0\n",
]


@pytest.mark.parametrize("encoded", [False, True], ids=["text", "encoded"])
def test_digests_are_pinned(encoded: bool) -> None:
    """The digests deployments record never change, nor depend on how notes are kept."""
    from bootkit.sysroot.contentdigest import Note, both_digests, content_digest, os_digest

    notes: list[Note] = list(PINNED_NOTES)
    if encoded:
        notes = [n.encode("utf-8", "surrogateescape") for n in PINNED_NOTES]
    assert both_digests(notes) == (
        "4a54d086c4857ae645ab2507cc9d5c67d314fa7576c73a30103b200d602379b7",
        "51c33b6ebf483d6fd582b27582b4c4db2a7e38fbcbad25f0a40299b7d7c8f466",
    )
    assert os_digest(iter(notes), ["usr/lib"], ["usr/lib\0d755:0:0\n"]) == (
        "d09274cece713f9fbb71583483308e0976a1c8c752897473d192c3129b01688c"
    )
    # A path noted twice: its last note holds, a hardlink's over any other.
    again = [*notes, "usr/etc/b\0fFFF:644:0:0\n", b"usr/share/c\0fGGG:644:0:0\n"]
    assert content_digest(again) == (
        "78eb4e3ad0d09b224c2eed4b01de5d02b55c85f774e64c8a3fa885231e740e30"
    )
