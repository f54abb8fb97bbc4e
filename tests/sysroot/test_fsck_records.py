"""`bootkit fsck` of the records: the state, metadata, trees, leftovers, and when fsck
cannot run. Each kind of damage is found (exit 1, nothing written), and `--repair`
fixes it without deleting what the admin made (see `support.damage`)."""

from __future__ import annotations

import fcntl
import os
import shutil
from dataclasses import replace
from pathlib import Path

import pytest
from support.damage import (
    all_repaired,
    assert_clean,
    by_serial,
    check_then_repair,
    fsck,
)
from support.helpers import (
    bls_entries,
    cli,
    deploy_tree,
    deployment_path,
    make_tree,
    ok,
    status_refs,
)

from bootkit.sysroot.layout import Sysroot

# --- a clean sysroot, and when fsck cannot run ------------------------------------


def test_a_clean_sysroot(sysroot: Path) -> None:
    code, report = fsck(sysroot)
    assert code == 0 and report["clean"]
    checked = report["checked"]
    assert (checked["deployments"], checked["payloads"], checked["entries"]) == (3, 2, 3)
    assert checked["objects"] > 3
    text = cli("fsck", "--sysroot", sysroot)
    assert text.exit_code == 0 and "No problems found." in text.stdout


@pytest.mark.parametrize("broken", ["no sysroot", "config", "locked"])
def test_fsck_that_cannot_run_exits_2(sysroot: Path, tmp_path: Path, broken: str) -> None:
    target = sysroot
    fd = None
    if broken == "no sysroot":
        target = tmp_path / "empty"
        target.mkdir()
    elif broken == "config":
        (sysroot / "bootkit/config.json").write_text("{")
    else:
        fd = os.open(sysroot / "bootkit/lock", os.O_RDWR)
        fcntl.flock(fd, fcntl.LOCK_EX)
    try:
        result = cli("fsck", "--repair", "--sysroot", target)
    finally:
        if fd is not None:
            os.close(fd)
    assert result.exit_code == 2, result.stdout + result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 2 and lines[1].startswith("bootkit: hint: "), result.stderr


def test_the_check_runs_while_another_command_holds_the_lock(sysroot: Path) -> None:
    fd = os.open(sysroot / "bootkit/lock", os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        assert fsck(sysroot)[0] == 0
    finally:
        os.close(fd)


# --- the state --------------------------------------------------------------------


def test_a_missing_state_is_rebuilt_with_the_default_from_boot(sysroot: Path, sr: Sysroot) -> None:
    refs = status_refs(sr)
    sr.state_path.unlink()
    _, after = check_then_repair(sysroot, [("state", "/bootkit/state.json")])
    assert all_repaired(after)
    assert status_refs(sr) == refs and sr.state().default == by_serial(sr, 2).ref
    assert_clean(sysroot)


def test_an_unreadable_state_is_kept_aside_and_rebuilt(sysroot: Path, sr: Sysroot) -> None:
    refs = status_refs(sr)
    sr.state_path.write_bytes(b'{"generation": "one"')
    _, after = check_then_repair(sysroot, [("state", "/bootkit/state.json")])
    assert all_repaired(after)
    (kept,) = (sysroot / "bootkit/damaged").iterdir()
    assert kept.read_bytes() == b'{"generation": "one"'
    assert status_refs(sr) == refs
    assert_clean(sysroot)


def test_a_deployment_the_state_does_not_list_is_listed_again(
    sysroot: Path, sr: Sysroot, template: Path
) -> None:
    old_state = sr.state_path.read_bytes()
    fourth = deploy_tree(sr, make_tree(sysroot.parent / "tree4", version="4"))
    sr.state_path.write_bytes(old_state)  # a state restored from a backup
    _, after = check_then_repair(sysroot, [("state", fourth.ref)])
    assert all_repaired(after)
    assert fourth.ref in status_refs(sr)
    assert_clean(sysroot)


def test_a_listed_deployment_that_is_gone_leaves_the_state(sysroot: Path, sr: Sysroot) -> None:
    gone = by_serial(sr, 2)  # the default
    shutil.rmtree(sr.tree(gone))
    sr.metadata_path(gone.os, gone.id).unlink()
    # Its kernel and stored files are left over, and so repaired too.
    _, after = check_then_repair(sysroot, [
        ("state", gone.ref), ("entries", "/efi"), ("unused-objects", "/bootkit/objects")
    ])
    assert all_repaired(after)
    assert gone.ref not in sr.state().deployments and sr.state().default == by_serial(sr, 3).ref
    assert_clean(sysroot)


# --- metadata and trees -----------------------------------------------------------


@pytest.mark.parametrize("damage", ["deleted", "corrupt", "another's", "escaping"])
def test_metadata_is_rebuilt_from_the_boot_entry(sysroot: Path, sr: Sysroot, damage: str) -> None:
    victim = by_serial(sr, 1)
    path = sr.metadata_path(victim.os, victim.id)
    if damage == "deleted":
        path.unlink()
    elif damage == "corrupt":
        path.write_bytes(b"\x00\xff")
    elif damage == "another's":
        path.write_text(by_serial(sr, 3).to_json())
    else:  # a boot file name that leads out of its payload's directory
        path.write_text(path.read_text().replace('"name": "initrd"', '"name": "../../x"'))
    _, after = check_then_repair(sysroot, [("metadata", victim.ref)])
    assert all_repaired(after)
    rebuilt = sr.load(victim.ref)
    same = ("os", "id", "version", "title", "kernel_version", "payload", "serial", "kargs", "uki",
            "payload_files")
    assert {f: getattr(rebuilt, f) for f in same} == {
        f: getattr(victim, f) for f in same
    } | {"payload_files": tuple(replace(f, source=None) for f in victim.payload_files)}
    assert rebuilt.kargs == ("console=ttyS0", "n=1")
    kept = list((sysroot / "bootkit/damaged").iterdir()) if damage != "deleted" else []
    assert len(kept) == (0 if damage == "deleted" else 1)
    assert_clean(sysroot)


def test_a_tree_without_metadata_or_entry_is_reported_and_kept(sysroot: Path, sr: Sysroot) -> None:
    stray = sr.meta / "deploy/test/deploy/9-feedbeef"
    shutil.copytree(sr.tree(by_serial(sr, 1)), stray, symlinks=True)
    _, after = check_then_repair(sysroot, [("metadata", "test/9-feedbeef")])
    (problem,) = after["problems"]
    assert not problem["repaired"] and "bootkit undeploy test/9-feedbeef" in problem["hint"]
    assert stray.is_dir()
    ok("undeploy", "--sysroot", sysroot, "9-feedbeef")
    assert_clean(sysroot)


def test_a_deleted_tree_leaves_the_state_and_its_metadata_stays(sysroot: Path, sr: Sysroot) -> None:
    victim = by_serial(sr, 1)
    shutil.rmtree(sr.tree(victim))
    _, after = check_then_repair(sysroot, [("tree", victim.ref), ("unused-objects", "/bootkit/objects")])
    (problem,) = [p for p in after["problems"] if p["kind"] == "tree"]
    assert problem["repaired"] and f"bootkit undeploy {victim.ref}" in problem["hint"]
    assert victim.ref not in sr.state().deployments
    assert sr.metadata_path(victim.os, victim.id).is_file()
    assert victim.path not in [deployment_path(e.options) for _, e in bls_entries(sr.boot_path)]
    ok("undeploy", "--sysroot", sysroot, victim.id)
    assert_clean(sysroot)


def test_a_changed_tree(sysroot: Path, sr: Sysroot) -> None:
    victim = by_serial(sr, 3)
    (sr.tree(victim) / "usr/bin/added").write_text("not from the image\n")
    _, after = check_then_repair(sysroot, [("tree", victim.ref)])
    (problem,) = after["problems"]
    assert not problem["repaired"] and "deploy its source again" in problem["hint"]
    assert (sr.tree(victim) / "usr/bin/added").is_file()


# --- leftovers and what nothing explains ------------------------------------------


def test_leftovers_are_removed(sysroot: Path, sr: Sysroot) -> None:
    ddir = sr.meta / "deploy/test/deploy"
    shutil.copytree(sr.tree(by_serial(sr, 1)), ddir / ".staging-1-abcd", symlinks=True)
    # A deploy cut short once it recorded 4-beef as in flight and gave it its name.
    shutil.copytree(sr.tree(by_serial(sr, 1)), ddir / "4-beef", symlinks=True)
    shutil.rmtree(ddir / "4-beef/etc")  # a merged copy, no one's data: never booted
    by_serial(sr, 1).with_changes(id="4-beef", serial=4).save(ddir / "4-beef.json")
    sr.state().with_changes(in_flight=("test/4-beef",)).save(sr.state_path)
    (ddir / ".4-beef.json.bootkit-tmp").write_text("{")
    _, after = check_then_repair(sysroot, [
        ("leftover", "/bootkit/deploy/test/deploy/.staging-1-abcd"),
        ("leftover", "/bootkit/deploy/test/deploy/.4-beef.json.bootkit-tmp"),
        ("leftover", "/bootkit/deploy/test/deploy/4-beef"),
        ("leftover", "/bootkit/deploy/test/deploy/4-beef.json"),
    ])
    assert all_repaired(after)
    assert not (ddir / "4-beef").exists() and not (ddir / "4-beef.json").exists()
    assert_clean(sysroot)


def test_what_nothing_explains_is_reported_and_kept(sysroot: Path, sr: Sysroot) -> None:
    ddir = sr.meta / "deploy/test/deploy"
    (ddir / "notes.txt~").write_text("mine\n")
    (ddir / "link").symlink_to(sr.tree(by_serial(sr, 1)))
    (sr.meta / "objects/zz").mkdir()
    _, after = check_then_repair(sysroot, [
        ("unexplained", "/bootkit/deploy/test/deploy/link"),
        ("unexplained", "/bootkit/deploy/test/deploy/notes.txt~"),
        ("unexplained", "/bootkit/objects/zz"),
    ])
    assert not any(p["repaired"] for p in after["problems"])
    assert (ddir / "notes.txt~").is_file() and (ddir / "link").is_symlink()
    assert (sr.meta / "objects/zz").is_dir()


# --- the text output --------------------------------------------------------------


def test_text_output_says_what_was_found_and_done(sysroot: Path, sr: Sysroot) -> None:
    (sr.boot_path / "bootkit/test" / by_serial(sr, 2).payload / "initrd").unlink()
    result = cli("fsck", "--sysroot", sysroot)
    assert result.exit_code == 1
    assert "payload: /efi/bootkit/test/" in result.stdout and "initrd missing" in result.stdout
    assert "'bootkit fsck --repair' fixes what it can" in result.stdout
    result = cli("fsck", "--repair", "--sysroot", sysroot)
    assert result.exit_code == 1 and "repaired: copied again from /bootkit/deploy/" in result.stdout
    assert cli("fsck", "--sysroot", sysroot).exit_code == 0
