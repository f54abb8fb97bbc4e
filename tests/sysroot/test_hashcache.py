"""The hash cache's file: what a save keeps, written a slice at a time."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from bootkit.base.files import atomic_write_chunks
from bootkit.sysroot import hashcache
from bootkit.sysroot.hashcache import HashCache


def _sources(tmp_path: Path, count: int) -> tuple[Path, dict[str, os.stat_result]]:
    src = tmp_path / "src"
    src.mkdir()
    stats = {}
    for i in range(count):
        # Names JSON must escape, one of them not UTF-8.
        name = f'f"{i}\\\udcff' if i % 7 == 0 else f"f{i}"
        path = os.path.join(src, name)
        with open(path, "w") as f:
            f.write(f"{i}\n")
        stats[name] = os.lstat(path)
    return src, stats


def test_saved_entries_load_again_across_slices(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(HashCache, "RACY_NS", 0)
    monkeypatch.setattr(hashcache, "_SLICE", 64)  # many slices for a few entries
    src, stats = _sources(tmp_path, 50)
    cache = HashCache(tmp_path / "cache.json", src)
    for i, (rel, st) in enumerate(stats.items()):
        cache.put(rel, st, f"{i:064x}")
    cache.save()
    data = json.loads((tmp_path / "cache.json").read_text())
    assert data["source"] == str(src.resolve())
    assert len(data["files"]) == len(stats)
    again = HashCache(tmp_path / "cache.json", src)
    assert [again.get(rel, st) for rel, st in stats.items()] == [
        f"{i:064x}" for i in range(len(stats))
    ]
    assert (tmp_path / "cache.json").stat().st_mode & 0o777 == 0o600


def test_entries_changed_too_recently_are_not_kept(tmp_path: Path) -> None:
    src, stats = _sources(tmp_path, 3)
    cache = HashCache(tmp_path / "cache.json", src)
    for rel, st in stats.items():
        cache.put(rel, st, "0" * 64)
    cache.save()  # the files were written just now: within RACY_NS of the save
    assert json.loads((tmp_path / "cache.json").read_text())["files"] == {}


def test_a_hit_is_kept_only_if_put_again(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(HashCache, "RACY_NS", 0)
    src, stats = _sources(tmp_path, 2)
    first = HashCache(tmp_path / "cache.json", src)
    for rel, st in stats.items():
        first.put(rel, st, "a" * 64)
    first.save()
    second = HashCache(tmp_path / "cache.json", src)
    (kept, st), (dropped, other) = stats.items()
    assert second.get(kept, st) == second.get(dropped, other) == "a" * 64
    second.put(kept, st, "a" * 64)
    second.save()
    assert list(json.loads((tmp_path / "cache.json").read_text())["files"]) == [kept]


def test_atomic_write_chunks_writes_them_in_order(tmp_path: Path) -> None:
    target = tmp_path / "out"
    target.write_text("old\n")
    atomic_write_chunks(target, (b"one ", b"", b"two\n"), mode=0o640)
    assert target.read_bytes() == b"one two\n"
    assert target.stat().st_mode & 0o777 == 0o640
    assert sorted(os.listdir(tmp_path)) == ["out"]
