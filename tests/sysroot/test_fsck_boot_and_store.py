"""`bootkit fsck` of $BOOT and of the content store: boot files, entries, stored objects.
Each kind of damage is found (exit 1, nothing written), and `--repair` fixes it
without deleting what the admin made (see `support.damage`)."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
from support.damage import (
    KERNELS,
    all_repaired,
    assert_clean,
    by_serial,
    check_then_repair,
    found,
    fsck,
)
from support.helpers import bls_entries, deploy_tree

from bootkit.sysroot.layout import Sysroot

# --- boot files and entries -------------------------------------------------------


@pytest.mark.parametrize("damage", ["initrd deleted", "linux changed", "directory deleted"])
def test_a_damaged_payload_is_copied_again_from_the_tree(
    sysroot: Path, sr: Sysroot, damage: str
) -> None:
    victim = by_serial(sr, 1)  # its payload is shared with 3
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
    assert all_repaired(after)
    assert (payload / "linux").read_bytes() == KERNELS[1]
    assert (payload / "initrd").read_bytes() == b"initramfs image\n"
    assert_clean(sysroot)


def test_a_payload_no_tree_can_restore(sysroot: Path, sr: Sysroot) -> None:
    victim = by_serial(sr, 2)
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
    victim = by_serial(sr, 2)
    (sr.boot_path / "bootkit/test" / victim.payload / "linux").write_bytes(b"kernel Y\n")
    _, after = check_then_repair(sysroot, [("payload", f"/efi/bootkit/test/{victim.payload}")])
    assert all_repaired(after)
    assert (sr.boot_path / "bootkit/test" / victim.payload / "linux").read_bytes() == KERNELS[2]
    assert_clean(sysroot)


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
    assert code == 1 and all_repaired(after)
    assert_clean(sysroot)
    assert "init=/bin/sh" not in "".join(e.options for _, e in bls_entries(sr.boot_path))


def test_a_payload_no_deployment_uses_is_removed(sysroot: Path, sr: Sysroot) -> None:
    extra = sr.boot_path / "bootkit/test/6.1.0-9-amd64-0123456789ab"
    shutil.copytree(sr.boot_path / "bootkit/test" / by_serial(sr, 2).payload, extra)
    _, after = check_then_repair(sysroot, [("entries", "/efi")])
    assert all_repaired(after) and not extra.exists()
    assert_clean(sysroot)


# --- the content store ------------------------------------------------------------


def _object_of(path: Path, sr: Sysroot) -> Path:
    ino = path.stat().st_ino
    return next(p for p in (sr.meta / "objects").glob("??/*") if p.stat().st_ino == ino)


@pytest.mark.parametrize("damage", ["written", "chmod"])
def test_a_changed_object_leaves_the_store(
    sysroot: Path, sr: Sysroot, template: Path, damage: str
) -> None:
    hello = sr.tree(by_serial(sr, 3)) / "usr/bin/hello"
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
    victim = by_serial(sr, 1)
    hello = sr.tree(victim) / "usr/bin/hello"
    shared = sr.tree(victim) / "etc/hello"
    os.link(hello, shared)
    _, after = check_then_repair(sysroot, [("shared-outside-usr", f"{victim.ref}:etc/hello")])
    assert all_repaired(after)
    assert shared.stat().st_ino != hello.stat().st_ino
    assert shared.read_bytes() == hello.read_bytes()
    shared.write_text("changed in /etc only\n")
    assert hello.read_bytes() == b"#!/bin/sh\necho hello\n"
    assert_clean(sysroot)


def test_objects_no_deployment_uses_are_pruned(sysroot: Path, sr: Sysroot) -> None:
    obj = _object_of(sr.tree(by_serial(sr, 1)) / "usr/bin/hello", sr)
    orphan = obj.parent / ("0" * 62)
    shutil.copyfile(obj, orphan)
    _, after = check_then_repair(sysroot, [("unused-objects", "/bootkit/objects")])
    assert all_repaired(after) and not orphan.exists() and obj.exists()
    assert_clean(sysroot)


