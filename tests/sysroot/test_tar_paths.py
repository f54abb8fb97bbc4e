"""Tar member paths and what the tree holds so far: checked with strings and a map of
the paths taken, never by asking the filesystem, and refusing what they refused then."""

from __future__ import annotations

import bz2
import gzip
import io
import itertools
import lzma
import os
import re
import subprocess
import tarfile
from pathlib import Path, PurePosixPath

import pytest

from bootkit.errors import BootkitError
from bootkit.sysroot.importers import open_source
from bootkit.sysroot.importers.tarmembers import escapes, member_path, member_rel
from bootkit.sysroot.store import ObjectStore

NAMES = [
    ".", "./", "./.", "a", "a/", "./a", "a/./b", "a//b", "./a//b/./c/", "usr/lib/x.so",
    "a/.../b", "a/..b", "..a/b", " /x", "a\\..\\b",
]


def _reference_path(name: str) -> PurePosixPath:
    """What member paths were made with before: PurePosixPath's parts."""
    parts = [p for p in PurePosixPath(name).parts if p != "."]
    return PurePosixPath(*parts) if parts else PurePosixPath(".")


@pytest.mark.parametrize("name", NAMES)
def test_member_rel_is_the_path_purepath_gave(name: str) -> None:
    assert member_rel(name) == str(_reference_path(name))
    assert member_path(name) == _reference_path(name)


@pytest.mark.parametrize("name", ["/", "/x", "//x"])
def test_member_rel_refuses_absolute_names_and_roots_them_for_layers(name: str) -> None:
    with pytest.raises(BootkitError, match="absolute path"):
        member_rel(name)
    assert member_rel(name, rooted=True) == str(_reference_path(name.lstrip("/") or "."))


@pytest.mark.parametrize("name", ["..", "../x", "a/..", "a/../b", "./a/b/../../..", "/../x"])
def test_member_rel_refuses_dot_dot(name: str) -> None:
    with pytest.raises(BootkitError, match=re.escape("contains '..'")):
        member_rel(name, rooted=True)


def _reference_escapes(rel: PurePosixPath, target: str) -> bool:
    """The symlink check as PurePosixPath made it."""
    if target.startswith("/"):
        return False
    depth = len(rel.parent.parts) if str(rel.parent) != "." else 0
    for part in PurePosixPath(target).parts:
        if part == "..":
            depth -= 1
            if depth < 0:
                return True
        elif part != ".":
            depth += 1
    return False


RELS = [".", "a", "a/b", "a/b/c"]
TARGETS = [
    "", ".", "..", "../..", "../../..", "x", "x/../..", "./../x", "a//..//..", "../a/../..",
    "/etc", "/../..", "x/./../../y", "../../../..//x",
]


@pytest.mark.parametrize(("rel", "target"), list(itertools.product(RELS, TARGETS)))
def test_escapes_on_strings_agrees_with_paths(rel: str, target: str) -> None:
    expected = _reference_escapes(PurePosixPath(rel), target)
    assert escapes(rel, target) is expected
    assert escapes(PurePosixPath(rel), target) is expected


# --- what the tree holds so far ------------------------------------------------------------

Member = tuple[str, bytes, str]  # name, tar type, link target or content


def _archive(path: Path, members: list[Member]) -> Path:
    with tarfile.open(path, "w", format=tarfile.GNU_FORMAT) as tf:
        for name, kind, extra in members:
            info = tarfile.TarInfo(name)
            info.type = kind
            info.mode = 0o755 if kind == tarfile.DIRTYPE else 0o644
            data = None
            if kind in (tarfile.SYMTYPE, tarfile.LNKTYPE):
                info.linkname = extra
            elif kind == tarfile.REGTYPE:
                data = extra.encode()
                info.size = len(data)
            tf.addfile(info, io.BytesIO(data) if data is not None else None)
    return path


def _import(tmp_path: Path, members: list[Member]) -> Path:
    archive = _archive(tmp_path / "t.tar", members)
    dest = tmp_path / "tree"
    open_source(archive).import_into(dest, ObjectStore(tmp_path / "objects"), lambda n: None,
                                     frozenset())
    return dest


FILE, DIR, SYM, LINK, CHR = (tarfile.REGTYPE, tarfile.DIRTYPE, tarfile.SYMTYPE, tarfile.LNKTYPE,
                             tarfile.CHRTYPE)

REFUSED = {
    "through a file": ([("usr/f", FILE, "x"), ("usr/f/x", FILE, "y")],
                       "written through usr/f, which is not a directory"),
    "through a symlink to a directory": (
        [("usr/d", DIR, ""), ("usr/l", SYM, "d"), ("usr/l/x", FILE, "y")],
        "written through usr/l, which is not a directory"),
    "through a hardlink": ([("usr/f", FILE, "x"), ("usr/h", LINK, "usr/f"), ("usr/h/x", FILE, "")],
                           "written through usr/h"),
    "through a file, deeper": ([("usr/f", FILE, "x"), ("usr/f/a/b/c", FILE, "y")],
                               "written through usr/f,"),
    "a file where a directory was implied": ([("usr/a/b", FILE, "x"), ("usr/a", FILE, "y")],
                                             "appears more than once"),
    "a directory where a symlink is": ([("usr/l", SYM, "x"), ("usr/l", DIR, "")],
                                       "appears more than once"),
    "a file twice, spelled apart": ([("usr/f", FILE, "x"), ("./usr//f", FILE, "y")],
                                    "appears more than once"),
    "a symlink over a directory": ([("usr/d", DIR, ""), ("usr/d", SYM, "x")],
                                   "appears more than once"),
    "a hardlink over its target": ([("usr/f", FILE, "x"), ("usr/f", LINK, "usr/f")],
                                   "appears more than once"),
    "a hardlink to a directory": ([("usr/d", DIR, ""), ("usr/h", LINK, "usr/d")],
                                  "not an earlier file"),
    "a hardlink to a later file": ([("usr/h", LINK, "usr/f"), ("usr/f", FILE, "x")],
                                   "not an earlier file"),
}


@pytest.mark.parametrize("case", sorted(REFUSED))
def test_paths_taken_earlier_are_refused(tmp_path: Path, case: str) -> None:
    members, message = REFUSED[case]
    with pytest.raises(BootkitError, match=message):
        _import(tmp_path, members)


def test_directories_may_repeat_and_follow_the_ones_implied(tmp_path: Path) -> None:
    dest = _import(tmp_path, [
        ("usr/a/b/f", FILE, "x"), ("usr/a", DIR, ""), ("usr/a/b", DIR, ""), ("usr/a", DIR, ""),
        ("usr/a/b/g", FILE, "y"),
    ])
    assert (dest / "usr/a/b/f").read_text() == "x"
    assert (dest / "usr/a/b/g").read_text() == "y"


def test_a_skipped_member_leaves_its_path_free(tmp_path: Path) -> None:
    """A device node is not made, so a later member may take its path, as one could
    when the filesystem was asked."""
    dest = _import(tmp_path, [("usr/dev", CHR, ""), ("usr/dev", FILE, "x"),
                              ("usr/node", CHR, ""), ("usr/node/f", FILE, "y")])
    assert (dest / "usr/dev").read_text() == "x"
    assert (dest / "usr/node/f").read_text() == "y"


def test_progress_of_a_plain_archive_counts_its_members(tmp_path: Path) -> None:
    archive = _archive(tmp_path / "t.tar", [("usr/f", FILE, "x" * 5000), ("usr/g", FILE, "y")])
    counted: list[int] = []
    open_source(archive).import_into(tmp_path / "tree", ObjectStore(tmp_path / "objects"),
                                     counted.append, frozenset())
    # Each member once read, a header and its content's blocks; the end blocks last.
    assert counted[:2] == [512 + 5120, 512 + 512]
    assert sum(counted) == archive.stat().st_size


# --- /var, which a later deploy drops: checked and hashed, not written ----------------------

VAR_MEMBERS: list[Member] = [
    ("usr", DIR, ""), ("usr/f", FILE, "usr's file"), ("var", DIR, ""),
    ("var/lib/state", FILE, "state"),  # its directory implied
    ("var/lib/link", SYM, "state"), ("var/lib/same", LINK, "var/lib/state"),
    ("var/lib/usr-f", LINK, "usr/f"),
    ("usr/g", LINK, "var/lib/state"),  # copied from the archive: /var is not written
    ("usr/h", LINK, "var/lib/usr-f"),  # a name of /var for a file outside it
]


def _import_dropping(tmp_path: Path, name: str, archive: Path, dropped: frozenset[str]) -> Path:
    dest = tmp_path / name
    # A store each, so that each import stores its files afresh.
    report = open_source(archive).import_into(dest, ObjectStore(tmp_path / f"{name}.objects"),
                                              lambda n: None, dropped)
    (dest / "report").write_text(repr((report.digest, report.content_digest, report.os_digest,
                                       report.notes, report.files, report.bytes, report.linked)))
    return dest


@pytest.mark.parametrize("compress", [False, True])
def test_a_dropped_var_is_not_written_and_the_tree_is_the_same(
    tmp_path: Path, compress: bool
) -> None:
    archive = _archive(tmp_path / "t.tar", VAR_MEMBERS)
    if compress:  # a stream, read once: /var is written as ever
        archive.with_suffix(".tar.gz").write_bytes(gzip.compress(archive.read_bytes()))
        archive = archive.with_suffix(".tar.gz")
    whole = _import_dropping(tmp_path, "whole", archive, frozenset())
    dropped = _import_dropping(tmp_path, "dropped", archive, frozenset({"var"}))
    assert (dropped / "report").read_text() == (whole / "report").read_text()
    assert sorted(p.name for p in (dropped / "var").iterdir()) == ([] if not compress else ["lib"])
    for tree in (whole, dropped):
        assert (tree / "usr/g").read_text() == "state"
        assert (tree / "usr/h").read_text() == "usr's file"
        # A link across /var is a copy, whatever was written of /var.
        assert (tree / "usr/h").stat().st_ino != (tree / "usr/f").stat().st_ino


VAR_REFUSED = {
    "an escaping symlink": ([("var/l", SYM, "../../x")], "escapes the tree"),
    "through a file": ([("var/f", FILE, "x"), ("var/f/x", FILE, "y")], "written through var/f"),
    "through a symlink": ([("var/l", SYM, "lib"), ("var/l/x", FILE, "y")],
                          "written through var/l"),
    "twice": ([("var/f", FILE, "x"), ("var/./f", FILE, "y")], "appears more than once"),
    "a hardlink to a later file": ([("var/h", LINK, "var/f"), ("var/f", FILE, "x")],
                                   "not an earlier file"),
    "dot-dot": ([("var/../../x", FILE, "x")], re.escape("contains '..'")),
}


@pytest.mark.parametrize("case", sorted(VAR_REFUSED))
def test_a_dropped_var_is_checked_as_ever(tmp_path: Path, case: str) -> None:
    members, message = VAR_REFUSED[case]
    archive = _archive(tmp_path / "t.tar", [("var", DIR, ""), *members])
    with pytest.raises(BootkitError, match=message):
        _import_dropping(tmp_path, "dropped", archive, frozenset({"var"}))


def test_a_dropped_var_claims_the_space_its_files_declare(tmp_path: Path) -> None:
    """A sparse member may declare far more than it holds: hashing it would read it all."""
    tree = tmp_path / "src"
    (tree / "var").mkdir(parents=True)
    st = os.statvfs(tmp_path)
    with open(tree / "var/huge", "wb") as f:
        f.truncate(min(2 * st.f_bavail * st.f_frsize + (1 << 30), 15 << 40))
    archive = tmp_path / "sparse.tar"
    subprocess.run(["tar", "-S", "-C", tree, "-cf", archive, "var"], check=True)
    with pytest.raises(BootkitError, match=r"tar member 'var/huge' is .* but the sysroot has"):
        _import_dropping(tmp_path, "dropped", archive, frozenset({"var"}))


@pytest.mark.parametrize("level", [1, 9])
@pytest.mark.parametrize("kind", ["bz2", "gz", "xz", "plain"])
def test_every_compression_is_told_from_a_plain_archive(
    tmp_path: Path, kind: str, level: int
) -> None:
    """A compressed archive is read as a stream, whatever its compression level."""
    plain = _archive(tmp_path / "t.tar", [("usr/f", FILE, "x" * 100)])
    data = plain.read_bytes()
    packed = {
        "bz2": lambda: bz2.compress(data, level), "gz": lambda: gzip.compress(data, level),
        "xz": lambda: lzma.compress(data, preset=level), "plain": lambda: data,
    }[kind]()
    archive = tmp_path / "packed"
    archive.write_bytes(packed)
    dest = tmp_path / "from-packed"
    open_source(archive).import_into(dest, ObjectStore(tmp_path / "objects"), lambda n: None,
                                     frozenset())
    assert (dest / "usr/f").read_text() == "x" * 100
