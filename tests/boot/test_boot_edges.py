"""Edges of $BOOT: what a power cut on FAT may keep, and hand-damaged files that must
not crash a command or make it replace files entries still boot from."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from support.helpers import deploy_tree, fails, init_sysroot, make_tree, ok

from bootkit.base import files
from bootkit.boot import payloads, switch
from bootkit.formats import grubenv
from bootkit.sysroot import operations


def test_the_default_entry_is_durable_before_any_other_appears(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    sr = init_sysroot(tmp_path / "sys")
    for n in (1, 2, 3):
        deploy_tree(sr, make_tree(tmp_path / f"t{n}", version=str(n)))
    entries = sr.boot_path / "loader/entries"
    events: list[str] = []
    real_rename, real_fsync_dir = os.rename, files.fsync_dir

    def rename(src: object, dst: object) -> None:
        if Path(str(dst)).parent == entries:
            events.append(f"show {Path(str(dst)).name}")
        real_rename(src, dst)  # type: ignore[arg-type]

    def fsync_dir(path: Path) -> None:
        if path == entries:
            events.append("sync")
        real_fsync_dir(path)

    monkeypatch.setattr(os, "rename", rename)
    monkeypatch.setattr(switch, "fsync_dir", fsync_dir)
    first = sr.resolve("1")
    operations.set_default(sr, first.id)
    shown = [i for i, e in enumerate(events) if e.startswith("show")]
    # The new default's entry is shown, then synced, before the next one is shown; the
    # only other entry written is the old default's, now of the other class.
    assert first.id in events[shown[0]] and events[shown[0] + 1] == "sync", events
    assert len(shown) == 2 and sr.resolve("3").id in events[shown[1]], events


def test_a_counter_grub_cannot_read_counts_as_no_tries_left(tmp_path: Path) -> None:
    sysroot = tmp_path / "sys"
    sr = init_sysroot(sysroot, "grub")
    dep = deploy_tree(sr, make_tree(tmp_path / "t1"))
    env = sr.boot_path / "bootkit/grub/grubenv"
    grubenv.write(env, {"bootkit_counted": dep.path, "bootkit_tries": "²"})
    rows = json.loads(ok("status", "--sysroot", sysroot, "--json").stdout)["deployments"]
    assert (rows[0]["boot"], rows[0]["tries_left"]) == ("bad", 0)


def test_a_serial_that_is_not_ascii_is_no_serial(tmp_path: Path) -> None:
    sysroot = tmp_path / "sys"
    sr = init_sysroot(sysroot)
    deploy_tree(sr, make_tree(tmp_path / "t1"))
    assert "no deployment '²'" in fails("set-default", "--sysroot", sysroot, "²")


@pytest.mark.parametrize(("field", "value"), [("generation", -5), ("generation", 10**9),
                                              ("serial", -1)])
def test_a_state_out_of_range_is_refused(tmp_path: Path, field: str, value: int) -> None:
    sysroot = tmp_path / "sys"
    sr = init_sysroot(sysroot)
    deploy_tree(sr, make_tree(tmp_path / "t1"))
    state = sysroot / "bootkit/state.json"
    state.write_text(json.dumps({**json.loads(state.read_text()), field: value}))
    entries = sorted(p.name for p in (sr.boot_path / "loader/entries").iterdir())
    assert "out of range" in fails("bootloader", "update", "--sysroot", sysroot)
    assert sorted(p.name for p in (sr.boot_path / "loader/entries").iterdir()) == entries


def test_a_stray_file_in_a_payload_does_not_replace_what_entries_boot(tmp_path: Path) -> None:
    sr = init_sysroot(tmp_path / "sys")
    dep = deploy_tree(sr, make_tree(tmp_path / "t1"))
    folder = payloads.Payload(dep.os, dep.payload).dir(sr.boot_path)
    (folder / "README").write_text("left here by someone\n")
    inodes = {p.name: p.stat().st_ino for p in folder.iterdir()}
    deploy_tree(sr, make_tree(tmp_path / "t2", files={"usr/share/x": "x"}))
    # Same kernel and initramfs, so the same payload: used as it is, not copied again.
    assert {p.name: p.stat().st_ino for p in folder.iterdir()} == inodes


def test_deploy_without_a_terminal_does_not_size_the_source(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from bootkit.sysroot.importers.directory import DirectorySource

    def no_sizing(self: object) -> int:
        raise AssertionError("the source was sized for a progress bar nobody sees")

    monkeypatch.setattr(DirectorySource, "size", no_sizing)
    sysroot = tmp_path / "sys"
    init_sysroot(sysroot)
    ok("deploy", "--sysroot", sysroot, make_tree(tmp_path / "t1"))
