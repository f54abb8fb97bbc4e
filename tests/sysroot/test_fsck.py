"""`bootkit fsck`: each kind of damage is found, and `--repair` fixes it without deleting
what the admin made.

Every test damages a copy of one sysroot, runs `fsck --json` (exit 1, the damage
named, nothing written), then `fsck --repair --json`, and checks the result.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import subprocess
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from support.helpers import (
    bls_entries,
    cli,
    deploy_tree,
    deployment_path,
    init_sysroot,
    make_tree,
    ok,
    snapshot,
    status_refs,
    untidy,
)

from bootkit.records.deployment import Deployment
from bootkit.sysroot.layout import Sysroot

KERNELS = {1: b"kernel A\n", 2: b"kernel B\n", 3: b"kernel A\n"}


@pytest.fixture(scope="module", params=["systemd-boot", "grub"])
def template(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Three deployments (1 and 3 share a kernel), 2 the default, each with an /etc edit."""
    base = tmp_path_factory.mktemp(f"fsck-{request.param}")
    sysroot = base / "sys"
    sr = init_sysroot(sysroot, request.param)
    for n, kernel in KERNELS.items():
        tree = make_tree(base / f"tree{n}", version=f"{n}", kernel=kernel)
        deploy_tree(sr, tree, kargs=["console=ttyS0", f"n={n}"])
    for dep in sr.deployments():
        (sr.tree(dep) / "etc/admin.conf").write_text(f"edited in {dep.id}\n")
    (sr.stateroot("test") / "var/lib/app/mine").write_text("user data\n")
    ok("set-default", "--sysroot", sysroot, "2")
    return sysroot


@pytest.fixture
def sysroot(template: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "sys"
    subprocess.run(["cp", "-a", str(template), str(copy)], check=True)
    return copy


@pytest.fixture
def sr(sysroot: Path) -> Sysroot:
    return Sysroot(sysroot)


def dep(sr: Sysroot, serial: int) -> Deployment:
    return next(d for d in sr.deployments() if d.serial == serial)


def fsck(sysroot: Path, *args: str) -> tuple[int, dict[str, Any]]:
    result = cli("fsck", "--sysroot", sysroot, "--json", *args)
    assert "Traceback" not in result.stderr, result.stderr
    return result.exit_code, json.loads(result.stdout) if result.stdout else {}


def found(report: dict[str, Any]) -> list[tuple[str, str]]:
    return [(p["kind"], p["subject"]) for p in report["problems"]]


def user_data(sysroot: Path) -> dict[str, object]:
    """What the admin made: each deployment's /etc and the shared /var."""
    root = sysroot / "bootkit/deploy/test"
    out = {}
    for d in sorted((root / "deploy").iterdir()):
        if d.is_dir() and not d.name.startswith(".") and (d / "etc").is_dir():
            out |= {f"{d.name}/{k}": v for k, v in snapshot(d / "etc").items()}
    return out | {f"var/{k}": v for k, v in snapshot(root / "var").items()}


def check_then_repair(
    sysroot: Path, expected: list[tuple[str, str]]
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Run fsck (it finds `expected`, each at least once, and writes nothing), then fsck
    --repair (it finds the first of them, and keeps the admin's data); both reports."""
    before = snapshot(sysroot)
    code, report = fsck(sysroot)
    assert code == 1, report
    assert set(found(report)) == set(expected), report
    assert snapshot(sysroot) == before, "a check without --repair wrote something"
    data = user_data(sysroot)
    code, repaired = fsck(sysroot, "--repair")
    assert code == 1, repaired
    # A repair can make what follows from the first problem go away (the entries of a
    # boot file that is copied again, say).
    assert expected[0] in found(repaired) and set(found(repaired)) <= set(expected), repaired
    kept = user_data(sysroot)
    assert {k: v for k, v in data.items() if k in kept} == data, "repair deleted user data"
    return report, repaired


def clean(sysroot: Path) -> None:
    code, report = fsck(sysroot)
    assert code == 0 and report["problems"] == [], report
    assert not untidy(Sysroot(sysroot))


def repaired(report: dict[str, Any]) -> bool:
    return all(p["repaired"] and not p["hint"] for p in report["problems"])


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
    assert repaired(after)
    assert status_refs(sr) == refs and sr.state().default == dep(sr, 2).ref
    clean(sysroot)


def test_an_unreadable_state_is_kept_aside_and_rebuilt(sysroot: Path, sr: Sysroot) -> None:
    refs = status_refs(sr)
    sr.state_path.write_bytes(b'{"generation": "one"')
    _, after = check_then_repair(sysroot, [("state", "/bootkit/state.json")])
    assert repaired(after)
    (kept,) = (sysroot / "bootkit/damaged").iterdir()
    assert kept.read_bytes() == b'{"generation": "one"'
    assert status_refs(sr) == refs
    clean(sysroot)


def test_a_deployment_the_state_does_not_list_is_listed_again(
    sysroot: Path, sr: Sysroot, template: Path
) -> None:
    old_state = sr.state_path.read_bytes()
    fourth = deploy_tree(sr, make_tree(sysroot.parent / "tree4", version="4"))
    sr.state_path.write_bytes(old_state)  # a state restored from a backup
    _, after = check_then_repair(sysroot, [("state", fourth.ref)])
    assert repaired(after)
    assert fourth.ref in status_refs(sr)
    clean(sysroot)


def test_a_listed_deployment_that_is_gone_leaves_the_state(sysroot: Path, sr: Sysroot) -> None:
    gone = dep(sr, 2)  # the default
    shutil.rmtree(sr.tree(gone))
    sr.metadata_path(gone.os, gone.id).unlink()
    # Its kernel and stored files are left over, and so repaired too.
    _, after = check_then_repair(sysroot, [
        ("state", gone.ref), ("entries", "/efi"), ("unused-objects", "/bootkit/objects")
    ])
    assert repaired(after)
    assert gone.ref not in sr.state().deployments and sr.state().default == dep(sr, 3).ref
    clean(sysroot)


# --- metadata and trees -----------------------------------------------------------


@pytest.mark.parametrize("damage", ["deleted", "corrupt", "another's"])
def test_metadata_is_rebuilt_from_the_boot_entry(sysroot: Path, sr: Sysroot, damage: str) -> None:
    victim = dep(sr, 1)
    path = sr.metadata_path(victim.os, victim.id)
    if damage == "deleted":
        path.unlink()
    elif damage == "corrupt":
        path.write_bytes(b"\x00\xff")
    else:
        path.write_text(dep(sr, 3).to_json())
    _, after = check_then_repair(sysroot, [("metadata", victim.ref)])
    assert repaired(after)
    rebuilt = sr.load(victim.ref)
    same = ("os", "id", "version", "title", "kernel_version", "payload", "serial", "kargs", "uki",
            "payload_files")
    assert {f: getattr(rebuilt, f) for f in same} == {
        f: getattr(victim, f) for f in same
    } | {"payload_files": tuple(replace(f, source=None) for f in victim.payload_files)}
    assert rebuilt.kargs == ("console=ttyS0", "n=1")
    kept = list((sysroot / "bootkit/damaged").iterdir()) if damage != "deleted" else []
    assert len(kept) == (0 if damage == "deleted" else 1)
    clean(sysroot)


def test_a_tree_without_metadata_or_entry_is_reported_and_kept(sysroot: Path, sr: Sysroot) -> None:
    stray = sr.meta / "deploy/test/deploy/9-feedbeef"
    shutil.copytree(sr.tree(dep(sr, 1)), stray, symlinks=True)
    _, after = check_then_repair(sysroot, [("metadata", "test/9-feedbeef")])
    (problem,) = after["problems"]
    assert not problem["repaired"] and "bootkit undeploy test/9-feedbeef" in problem["hint"]
    assert stray.is_dir()
    ok("undeploy", "--sysroot", sysroot, "9-feedbeef")
    clean(sysroot)


def test_a_deleted_tree_leaves_the_state_and_its_metadata_stays(sysroot: Path, sr: Sysroot) -> None:
    victim = dep(sr, 1)
    shutil.rmtree(sr.tree(victim))
    _, after = check_then_repair(sysroot, [("tree", victim.ref), ("unused-objects", "/bootkit/objects")])
    (problem,) = [p for p in after["problems"] if p["kind"] == "tree"]
    assert problem["repaired"] and f"bootkit undeploy {victim.ref}" in problem["hint"]
    assert victim.ref not in sr.state().deployments
    assert sr.metadata_path(victim.os, victim.id).is_file()
    assert victim.path not in [deployment_path(e.options) for _, e in bls_entries(sr.boot_path)]
    ok("undeploy", "--sysroot", sysroot, victim.id)
    clean(sysroot)


def test_a_changed_tree(sysroot: Path, sr: Sysroot) -> None:
    victim = dep(sr, 3)
    (sr.tree(victim) / "usr/bin/added").write_text("not from the image\n")
    _, after = check_then_repair(sysroot, [("tree", victim.ref)])
    (problem,) = after["problems"]
    assert not problem["repaired"] and "deploy its source again" in problem["hint"]
    assert (sr.tree(victim) / "usr/bin/added").is_file()


# --- boot files and entries -------------------------------------------------------


@pytest.mark.parametrize("damage", ["initrd deleted", "linux changed", "directory deleted"])
def test_a_damaged_payload_is_copied_again_from_the_tree(
    sysroot: Path, sr: Sysroot, damage: str
) -> None:
    victim = dep(sr, 1)  # its payload is shared with 3
    payload = sr.boot_path / "bootkit/test" / victim.payload
    if damage == "initrd deleted":
        (payload / "initrd").unlink()
    elif damage == "linux changed":
        (payload / "linux").write_bytes(b"kernel X\n")
    else:
        shutil.rmtree(payload)
    # The entries that boot a missing file are written anew.
    also = [] if damage == "linux changed" else [("entries", "/efi")]
    _, after = check_then_repair(sysroot, [("payload", f"/efi/bootkit/test/{victim.payload}"), *also])
    assert repaired(after)
    assert (payload / "linux").read_bytes() == KERNELS[1]
    assert (payload / "initrd").read_bytes() == b"initramfs image\n"
    clean(sysroot)


def test_a_payload_no_tree_can_restore(sysroot: Path, sr: Sysroot) -> None:
    victim = dep(sr, 2)
    (sr.boot_path / "bootkit/test" / victim.payload / "initrd").unlink()
    (sr.tree(victim) / "usr/lib/modules/6.1.0-1-amd64/initramfs.img").write_bytes(b"other\n")
    code, after = fsck(sysroot, "--repair")
    assert code == 1
    (problem,) = [p for p in after["problems"] if p["kind"] == "payload"]
    assert not problem["repaired"] and "deploy the source" in problem["hint"]
    # No entry boots the missing file; the deployment is still listed, and still there.
    for _, entry in bls_entries(sr.boot_path):
        assert all((sr.boot_path / f.lstrip("/")).is_file() for f in entry.files)
    assert victim.ref in sr.state().deployments and sr.tree(victim).is_dir()


def test_old_metadata_payloads_are_checked_by_their_name(sysroot: Path, sr: Sysroot) -> None:
    for d in sr.deployments():
        data = json.loads(d.to_json())
        for key in ("payload_files", "content_digest", "os_digest"):
            del data[key]
        sr.metadata_path(d.os, d.id).write_text(json.dumps(data))
    assert fsck(sysroot)[0] == 0
    victim = dep(sr, 2)
    (sr.boot_path / "bootkit/test" / victim.payload / "linux").write_bytes(b"kernel Y\n")
    _, after = check_then_repair(sysroot, [("payload", f"/efi/bootkit/test/{victim.payload}")])
    assert repaired(after)
    assert (sr.boot_path / "bootkit/test" / victim.payload / "linux").read_bytes() == KERNELS[2]
    clean(sysroot)


@pytest.mark.parametrize("damage", ["edited", "deleted", "garbage"])
def test_entries_are_written_anew(sysroot: Path, sr: Sysroot, damage: str) -> None:
    (name, _), *_ = bls_entries(sr.boot_path)
    path = sr.boot_path / "loader/entries" / name
    if damage == "edited":
        path.write_text(path.read_text().replace("console=ttyS0", "init=/bin/sh"))
    elif damage == "deleted":
        path.unlink()
    else:
        path.write_bytes(b"\x00 not an entry\n")
    code, report = fsck(sysroot)
    assert code == 1 and {k for k, _ in found(report)} == {"entries"}
    code, after = fsck(sysroot, "--repair")
    assert code == 1 and repaired(after)
    clean(sysroot)
    assert "init=/bin/sh" not in "".join(e.options for _, e in bls_entries(sr.boot_path))


def test_a_payload_no_deployment_uses_is_removed(sysroot: Path, sr: Sysroot) -> None:
    extra = sr.boot_path / "bootkit/test/6.1.0-9-amd64-0123456789ab"
    shutil.copytree(sr.boot_path / "bootkit/test" / dep(sr, 2).payload, extra)
    _, after = check_then_repair(sysroot, [("entries", "/efi")])
    assert repaired(after) and not extra.exists()
    clean(sysroot)


# --- leftovers and what nothing explains ------------------------------------------


def test_leftovers_are_removed(sysroot: Path, sr: Sysroot) -> None:
    ddir = sr.meta / "deploy/test/deploy"
    shutil.copytree(sr.tree(dep(sr, 1)), ddir / ".staging-1-abcd", symlinks=True)
    (ddir / ".4-beef.json.bootkit-tmp").write_text("{")
    _, after = check_then_repair(sysroot, [
        ("leftover", "/bootkit/deploy/test/deploy/.staging-1-abcd"),
        ("leftover", "/bootkit/deploy/test/deploy/.4-beef.json.bootkit-tmp"),
    ])
    assert repaired(after)
    clean(sysroot)


def test_what_nothing_explains_is_reported_and_kept(sysroot: Path, sr: Sysroot) -> None:
    ddir = sr.meta / "deploy/test/deploy"
    (ddir / "notes.txt~").write_text("mine\n")
    (ddir / "link").symlink_to(sr.tree(dep(sr, 1)))
    (sr.meta / "objects/zz").mkdir()
    _, after = check_then_repair(sysroot, [
        ("unexplained", "/bootkit/deploy/test/deploy/link"),
        ("unexplained", "/bootkit/deploy/test/deploy/notes.txt~"),
        ("unexplained", "/bootkit/objects/zz"),
    ])
    assert not any(p["repaired"] for p in after["problems"])
    assert (ddir / "notes.txt~").is_file() and (ddir / "link").is_symlink()
    assert (sr.meta / "objects/zz").is_dir()


# --- the content store ------------------------------------------------------------


def _object_of(path: Path, sr: Sysroot) -> Path:
    ino = path.stat().st_ino
    return next(p for p in (sr.meta / "objects").glob("??/*") if p.stat().st_ino == ino)


@pytest.mark.parametrize("damage", ["written", "chmod"])
def test_a_changed_object_leaves_the_store(
    sysroot: Path, sr: Sysroot, template: Path, damage: str
) -> None:
    hello = sr.tree(dep(sr, 3)) / "usr/bin/hello"
    obj = _object_of(hello, sr)
    if damage == "written":
        with open(hello, "r+b") as f:  # in place, as an editor that keeps the inode does
            f.write(b"#!/bin/sh\necho pwned\n")
    else:
        hello.chmod(0o4755)
    subject = "/" + str(obj.relative_to(sysroot))
    trees = [("tree", d.ref) for d in sr.deployments()]
    _, after = check_then_repair(sysroot, [("object", subject), *trees])
    (problem,) = [p for p in after["problems"] if p["kind"] == "object"]
    assert all(f"{d.ref}:usr/bin/hello" in problem["message"] for d in sr.deployments())
    assert problem["repaired"] and not obj.exists()
    assert hello.is_file()  # the deployments keep their file
    # A clean deploy of the same tree no longer shares the changed file.
    fresh = deploy_tree(sr, template.parent / "tree1")
    assert (sr.tree(fresh) / "usr/bin/hello").read_bytes() == b"#!/bin/sh\necho hello\n"
    assert (sr.tree(fresh) / "usr/bin/hello").stat().st_mode & 0o7777 == 0o755


def test_a_stored_object_outside_usr_gets_a_copy_of_its_own(sysroot: Path, sr: Sysroot) -> None:
    victim = dep(sr, 1)
    hello = sr.tree(victim) / "usr/bin/hello"
    shared = sr.tree(victim) / "etc/hello"
    os.link(hello, shared)
    _, after = check_then_repair(sysroot, [("shared-outside-usr", f"{victim.ref}:etc/hello")])
    assert repaired(after)
    assert shared.stat().st_ino != hello.stat().st_ino
    assert shared.read_bytes() == hello.read_bytes()
    shared.write_text("changed in /etc only\n")
    assert hello.read_bytes() == b"#!/bin/sh\necho hello\n"
    clean(sysroot)


def test_objects_no_deployment_uses_are_pruned(sysroot: Path, sr: Sysroot) -> None:
    obj = _object_of(sr.tree(dep(sr, 1)) / "usr/bin/hello", sr)
    orphan = obj.parent / ("0" * 62)
    shutil.copyfile(obj, orphan)
    _, after = check_then_repair(sysroot, [("unused-objects", "/bootkit/objects")])
    assert repaired(after) and not orphan.exists() and obj.exists()
    clean(sysroot)


# --- the text output --------------------------------------------------------------


def test_text_output_says_what_was_found_and_done(sysroot: Path, sr: Sysroot) -> None:
    (sr.boot_path / "bootkit/test" / dep(sr, 2).payload / "initrd").unlink()
    result = cli("fsck", "--sysroot", sysroot)
    assert result.exit_code == 1
    assert "payload: /efi/bootkit/test/" in result.stdout and "initrd missing" in result.stdout
    assert "'bootkit fsck --repair' fixes what it can" in result.stdout
    result = cli("fsck", "--repair", "--sysroot", sysroot)
    assert result.exit_code == 1 and "repaired: copied again from /bootkit/deploy/" in result.stdout
    assert cli("fsck", "--sysroot", sysroot).exit_code == 0
