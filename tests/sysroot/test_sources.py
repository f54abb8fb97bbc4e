"""The source protocol: opening a directory or an archive, sizes, dropped names, the digest."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
from pathlib import Path

import pytest
from support.helpers import make_tree

from bootkit.errors import BootkitError
from bootkit.sysroot.importers import DirectorySource, Source, TarSource, open_source
from bootkit.sysroot.importers import directory as directory_source
from bootkit.sysroot.store import ObjectStore


def _tar(src: Path, out: Path) -> Path:
    subprocess.run(["tar", "-C", str(src), "--numeric-owner", "-cf", str(out), "."], check=True)
    return out


def _import(source: Source, dest: Path, dropped: frozenset[str] = frozenset()) -> list[int]:
    """Import `source` into `dest`; return what the progress callback was given."""
    counted: list[int] = []
    source.import_into(dest, ObjectStore(dest.parent / "objects"), counted.append, dropped)
    return counted


def test_a_directory(tmp_path: Path) -> None:
    tree = make_tree(tmp_path / "tree", files={"usr/share/data": b"x" * 5000})
    (tree / "usr/share/link").symlink_to("data")
    cache = tmp_path / "meta/import-cache.json"
    cache.parent.mkdir()
    source = open_source(tree, cache)
    assert isinstance(source, DirectorySource)
    assert (source.label, source.origin) == ("tree", str(tree.resolve()))
    regular = [p for p in tree.rglob("*") if p.is_file() and not p.is_symlink()]
    assert source.size() == sum(p.stat().st_size for p in regular) > 5000
    counted = _import(source, tmp_path / "dest")
    assert sum(counted) == source.size()
    assert (tmp_path / "dest/usr/share/data").read_bytes() == b"x" * 5000
    # The hash cache is kept only once the deployment is committed.
    assert not cache.exists()
    source.imported()
    assert json.loads(cache.read_text())["source"] == str(tree.resolve())


def test_a_directory_seen_through_a_relative_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    make_tree(tmp_path / "tree")
    monkeypatch.chdir(tmp_path)
    assert open_source(Path("tree")).origin == str(tmp_path / "tree")


def test_a_tar_archive(tmp_path: Path) -> None:
    archive = _tar(make_tree(tmp_path / "tree"), tmp_path / "rootfs.tar")
    cache = tmp_path / "import-cache.json"
    source = open_source(archive, cache)
    assert isinstance(source, TarSource)
    assert (source.label, source.origin) == ("rootfs.tar", str(archive))
    assert source.size() == archive.stat().st_size
    counted = _import(source, tmp_path / "dest")
    assert sum(counted) == source.size()
    assert (tmp_path / "dest/usr/bin/hello").is_file()
    source.imported()
    assert not cache.exists()  # an archive is read whole every time


def test_anything_else_is_refused_with_a_hint(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "pipe")
    (tmp_path / "file").write_text("x")
    cases = {
        tmp_path / "pipe": "is a fifo, not a directory or a tar archive",
        tmp_path / "missing": "does not exist",
        tmp_path / "file/below": "does not exist",
    }
    for location, message in cases.items():
        with pytest.raises(BootkitError, match=message) as caught:
            open_source(location, tmp_path / "cache.json")
        assert str(location) in caught.value.message
        assert caught.value.hint == "give a directory or a tar archive of a root tree"


def test_a_dropped_directory_is_not_read(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    tree = make_tree(tmp_path / "tree", files={"var/cache/big": b"v" * 4096})
    hashed: list[str] = []
    real_hash = directory_source._read_hash

    def counting_hash(fd: int) -> tuple[str, bytes | None]:
        hashed.append(os.path.relpath(os.readlink(f"/proc/self/fd/{fd}"), tree))
        return real_hash(fd)

    monkeypatch.setattr(directory_source, "_read_hash", counting_hash)
    whole = open_source(tree)
    _import(whole, tmp_path / "whole")
    assert "var/cache/big" in hashed
    hashed.clear()
    _import(open_source(tree), tmp_path / "without-var", frozenset({"var"}))
    assert hashed and not [rel for rel in hashed if rel.startswith("var/")]
    assert list((tmp_path / "without-var/var").iterdir()) == []


def _note(rel: str, what: str) -> bytes:
    return f"{rel}\0{what}\n".encode()


def _dir_note(root: Path, rel: str) -> bytes:
    st = (root / rel).lstat()
    return _note(rel, f"d{st.st_mode:o}:{st.st_uid}:{st.st_gid}")


def _file_note(root: Path, rel: str) -> bytes:
    path = root / rel
    st = path.lstat()
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    return _note(rel, f"f{digest}:{st.st_mode:o}:{st.st_uid}:{st.st_gid}")


def _small_tree(root: Path) -> Path:
    (root / "etc").mkdir(parents=True)
    (root / "etc/hostname").write_text("box\n")
    (root / "usr/bin").mkdir(parents=True)
    (root / "usr/bin/tool").write_bytes(b"#!/bin/sh\n")
    (root / "usr/bin/tool").chmod(0o755)
    os.link(root / "usr/bin/tool", root / "usr/bin/tool2")
    (root / "usr/lib").symlink_to("bin")
    (root / "var/log").mkdir(parents=True)
    (root / "var/log/old").write_text("not part of the identity\n")
    return root


def test_the_digest_is_over_one_note_per_entry(tmp_path: Path) -> None:
    """Deployment ids carry the digest: its notes must never change."""
    root = _small_tree(tmp_path / "tree")
    common = [
        _dir_note(root, "etc"),
        _file_note(root, "etc/hostname"),
        _dir_note(root, "usr"),
        _dir_note(root, "usr/bin"),
        _file_note(root, "usr/bin/tool"),
    ]
    link = _note("usr/lib", "lbin")
    # A directory is walked in name order, its root included; a hardlink is one more file.
    expected = [_dir_note(root, "."), *common, _file_note(root, "usr/bin/tool2"), link]
    report = open_source(root).import_into(
        tmp_path / "from-dir", ObjectStore(tmp_path / "objects"), lambda n: None, frozenset()
    )
    assert report.digest == hashlib.sha256(b"".join(expected)).hexdigest()
    # An archive in its own member order; a hardlink names its target.
    archive = tmp_path / "tree.tar"
    names = ["etc", "etc/hostname", "usr", "usr/bin", "usr/bin/tool", "usr/bin/tool2",
             "usr/lib", "var", "var/log", "var/log/old"]
    subprocess.run(["tar", "-C", str(root), "--numeric-owner", "--no-recursion", "-cf",
                    str(archive), *names], check=True)
    expected = [*common, _note("usr/bin/tool2", "husr/bin/tool"), link]
    report = open_source(archive).import_into(
        tmp_path / "from-tar", ObjectStore(tmp_path / "objects"), lambda n: None, frozenset()
    )
    assert report.digest == hashlib.sha256(b"".join(expected)).hexdigest()
