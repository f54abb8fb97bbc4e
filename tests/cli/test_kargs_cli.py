"""Kernel arguments through the CLI: the image's from kargs.d, the admin's from `bootkit kargs`."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from support.helpers import (
    bls_entries,
    booted,
    cli,
    deployment_path,
    fails,
    grub_slot_text,
    make_tree,
    ok,
    snapshot,
)

from bootkit.sysroot.imageargs import KARGS_DIR
from bootkit.sysroot.layout import Sysroot


@pytest.fixture(params=["systemd-boot", "grub"])
def sysroot(request: pytest.FixtureRequest, tmp_path: Path) -> Path:
    path = tmp_path / "sys"
    path.mkdir()
    ok("init", "--sysroot", path, "--os", "test", "--bootloader", request.param)
    return path


def image(tmp_path: Path, n: int, *kargs: str) -> Path:
    """A tree whose kargs.d ships `kargs`."""
    files = {f"{KARGS_DIR}/50-image.conf": "# shipped by the image\n" + "".join(
        f"{k}\n" for k in kargs)}
    return make_tree(tmp_path / f"tree{n}", version=f"{n}.0", kernel=f"kernel {n}\n".encode(),
                     files=files)


def deploy(sysroot: Path, tree: Path, *extra: str) -> dict:
    return json.loads(ok("deploy", "--sysroot", sysroot, tree, "--json", *extra).stdout)


def kargs_json(sysroot: Path, *args: str) -> dict:
    return json.loads(ok("kargs", "--sysroot", sysroot, "--json", *args).stdout)


def entry_args(sysroot: Path, dep: dict) -> list[str]:
    """The arguments after bootkit= in `dep`'s BLS entry and, with GRUB, its slot file."""
    boot = sysroot / "efi"
    found = [e.options for _, e in bls_entries(boot) if deployment_path(e.options) == dep["path"]]
    slot = grub_slot_text(boot)
    if slot is not None:
        found += re.findall(rf"^\s*linux \S+ (.*bootkit={dep['path']}(?: .*)?)$", slot, re.M)
    assert len(found) == (2 if slot is not None else 1), found
    tails = {opts.split(f"bootkit={dep['path']}", 1)[1] for opts in found}
    assert len(tails) == 1, f"the BLS entry and the GRUB menu differ: {found}"
    return tails.pop().split()


def test_an_update_takes_the_new_images_arguments_and_keeps_the_admins(
    sysroot: Path, tmp_path: Path
) -> None:
    first = deploy(sysroot, image(tmp_path, 1, "a"))
    assert first["image_kargs"] == ["a"] and first["kargs"] == []
    assert entry_args(sysroot, first) == ["a"]
    shown = kargs_json(sysroot, "--append", "b")
    assert (shown["id"], shown["image_kargs"], shown["kargs"]) == (first["id"], ["a"], ["b"])
    assert entry_args(sysroot, first) == ["a", "b"]

    second = deploy(sysroot, image(tmp_path, 2, "c"))
    assert (second["image_kargs"], second["kargs"]) == (["c"], ["b"])
    assert entry_args(sysroot, second) == ["c", "b"]
    # The old deployment keeps its own.
    assert entry_args(sysroot, first) == ["a", "b"]
    meta = json.loads((sysroot / f"bootkit/deploy/test/deploy/{second['id']}.json").read_text())
    assert (meta["image_kargs"], meta["kargs"]) == (["c"], ["b"])
    assert ok("fsck", "--sysroot", sysroot).exit_code == 0


def test_deploy_karg_sets_the_admins_after_the_images(sysroot: Path, tmp_path: Path) -> None:
    dep = deploy(sysroot, image(tmp_path, 1, "quiet", "loglevel=3"), "--karg", "loglevel=7")
    assert entry_args(sysroot, dep) == ["quiet", "loglevel=3", "loglevel=7"]
    dep = deploy(sysroot, image(tmp_path, 2), "--karg-none")
    assert dep["image_kargs"] == dep["kargs"] == [] and entry_args(sysroot, dep) == []


def test_showing_prints_both_lists_and_changes_nothing(sysroot: Path, tmp_path: Path) -> None:
    dep = deploy(sysroot, image(tmp_path, 1, "quiet"), "--karg", "console=ttyS0")
    before = snapshot(sysroot)
    text = ok("kargs", "--sysroot", sysroot).stdout.splitlines()
    assert text == [
        f"test/{dep['id']} (Test OS 1.0 1.0)",
        f"  image ({KARGS_DIR}): quiet",
        "  admin: console=ttyS0",
    ]
    shown = kargs_json(sysroot, dep["id"])
    assert shown == {
        "id": dep["id"], "os": "test", "path": dep["path"], "uki": False,
        "image_kargs": ["quiet"], "kargs": ["console=ttyS0"],
        "options": f"root=LABEL=bootkit-root rw bootkit={dep['path']} quiet console=ttyS0",
        "changed": False,
    }
    assert snapshot(sysroot) == before
    empty = deploy(sysroot, image(tmp_path, 2), "--karg-none")
    assert "admin: (none)" in ok("kargs", "--sysroot", sysroot, empty["id"]).stdout


def test_changes_delete_replace_append(sysroot: Path, tmp_path: Path) -> None:
    deploy(sysroot, image(tmp_path, 1, "quiet"), "--karg", "console=ttyS0",
           "--karg", "loglevel=7", "--karg", "nomodeset")
    out = ok("kargs", "--sysroot", sysroot, "--delete", "nomodeset", "--replace", "loglevel=3",
             "--replace", "console=ttyS0=ttyS1", "--append", "splash").stdout
    assert out.startswith("Changed the kernel arguments of test/")
    assert "admin: console=ttyS1 loglevel=3 splash" in out
    again = ok("kargs", "--sysroot", sysroot, "--append", "splash").stdout
    assert "nothing changed" in again
    dep = kargs_json(sysroot)
    assert dep["options"].endswith("quiet console=ttyS1 loglevel=3 splash")
    assert ok("fsck", "--sysroot", sysroot).exit_code == 0


def test_without_id_the_booted_deployment_else_the_default(sysroot: Path, tmp_path: Path) -> None:
    old = deploy(sysroot, image(tmp_path, 1))
    new = deploy(sysroot, image(tmp_path, 2))
    with booted(old["path"]):
        assert kargs_json(sysroot, "--append", "x")["id"] == old["id"]
    assert kargs_json(sysroot, "--append", "y")["id"] == new["id"]
    assert entry_args(sysroot, old) == ["x"] and entry_args(sysroot, new) == ["y"]


def test_refusals_change_nothing(sysroot: Path, tmp_path: Path) -> None:
    deploy(sysroot, image(tmp_path, 1, "quiet"), "--karg", "console=ttyS0")
    before = snapshot(sysroot)
    for args, message in [
        (["--delete", "quiet"], "the image ships it"),
        (["--append", "bootkit=/bootkit/deploy/test/deploy/x"], "bootkit sets it itself"),
        (["--append", "a$b"], "invalid kernel argument"),
        (["--replace", "console"], "invalid replacement"),
        (["--append", "x", "nosuch"], "no deployment 'nosuch'"),
        (["--append", "x" * 1000, "--append", "y" * 1000], "the kernel reads at most"),
    ]:
        assert message in fails("kargs", "--sysroot", sysroot, *args)
    assert snapshot(sysroot) == before


def test_help_documents_the_edits() -> None:
    text = " ".join(ok("kargs", "--help").stdout.split())
    for words in ("--delete, every --replace, every --append", "NAME=OLD=NEW",
                  "unless the admin's list has exactly ARG", "a bare NAME removes every",
                  "usr/lib/bootkit/kargs.d"):
        assert words in text


def test_metadata_without_image_kargs_still_loads(sysroot: Path, tmp_path: Path) -> None:
    dep = deploy(sysroot, image(tmp_path, 1), "--karg", "quiet")
    path = sysroot / f"bootkit/deploy/test/deploy/{dep['id']}.json"
    data = json.loads(path.read_text())
    del data["image_kargs"]
    path.write_text(json.dumps(data))
    rows = json.loads(ok("status", "--sysroot", sysroot, "--json").stdout)["deployments"]
    assert (rows[0]["image_kargs"], rows[0]["kargs"]) == ([], ["quiet"])
    assert ok("fsck", "--sysroot", sysroot).exit_code == 0
    assert kargs_json(sysroot, "--append", "x")["kargs"] == ["quiet", "x"]


def test_bad_image_kargs_in_metadata_are_refused(sysroot: Path, tmp_path: Path) -> None:
    dep = deploy(sysroot, image(tmp_path, 1))
    path = sysroot / f"bootkit/deploy/test/deploy/{dep['id']}.json"
    data = json.loads(path.read_text())
    data["image_kargs"] = ["a b"]
    path.write_text(json.dumps(data))
    assert "invalid image kernel argument" in fails("kargs", "--sysroot", sysroot, dep["id"])


def test_fsck_rebuilds_both_lists_from_the_entry(sysroot: Path, tmp_path: Path) -> None:
    dep = deploy(sysroot, image(tmp_path, 1, "quiet", "splash"), "--karg", "console=ttyS0")
    path = sysroot / f"bootkit/deploy/test/deploy/{dep['id']}.json"
    path.unlink()
    assert "rebuilt from its boot entry" in cli("fsck", "--sysroot", sysroot, "--repair").stdout
    rebuilt = Sysroot(sysroot).load(f"test/{dep['id']}")
    assert (rebuilt.image_kargs, rebuilt.kargs) == (("quiet", "splash"), ("console=ttyS0",))
    assert ok("fsck", "--sysroot", sysroot).exit_code == 0
    # An image that no longer says what the entry has: every argument is kept, as the admin's.
    tree = sysroot / f"bootkit/deploy/test/deploy/{dep['id']}"
    (tree / KARGS_DIR / "50-image.conf").write_text("other\n")
    path.unlink()
    assert "rebuilt from its boot entry" in cli("fsck", "--sysroot", sysroot, "--repair").stdout
    rebuilt = Sysroot(sysroot).load(f"test/{dep['id']}")
    assert (rebuilt.image_kargs, rebuilt.kargs) == ((), ("quiet", "splash", "console=ttyS0"))


def test_a_bad_kargs_d_fails_the_deploy_naming_file_and_line(
    sysroot: Path, tmp_path: Path
) -> None:
    deploy(sysroot, image(tmp_path, 1))
    tree = image(tmp_path, 2, "quiet", "init=/bin/sh;reboot")
    before = snapshot(sysroot)
    message = fails("deploy", "--sysroot", sysroot, tree)
    assert f"/{KARGS_DIR}/50-image.conf in " in message and "line 3" in message
    assert snapshot(sysroot) == before

