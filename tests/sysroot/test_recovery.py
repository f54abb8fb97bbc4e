"""Damaged records and boot files: no deployment is lost, and there is always a way out.

Each scenario damages a copy of one sysroot the way a crash, a full disk or an
unlucky admin would, then drives the commands a user would try next.
"""

from __future__ import annotations

import errno
import json
import re
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
from support.damage import KERNELS, copy_of, kept_all_of, populated_sysroot, user_data
from support.helpers import (
    bls_entries,
    cli,
    deployment_path,
    fails,
    make_tree,
    ok,
    snapshot,
    status_refs,
    untidy,
)

from bootkit.records.deployment import Deployment
from bootkit.records.state import State
from bootkit.sysroot.layout import Sysroot


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return populated_sysroot(tmp_path_factory.mktemp("recovery"), "systemd-boot")


@pytest.fixture
def sysroot(template: Path, tmp_path: Path) -> Path:
    return copy_of(template, tmp_path / "sys")


@pytest.fixture
def new_tree(tmp_path: Path) -> Path:
    return make_tree(tmp_path / "tree4", version="4", kernel=b"kernel D\n")


def deps(sysroot: Path) -> dict[int, Deployment]:
    sr = Sysroot(sysroot)
    return {d.serial: d for d in sr.deployments(State.load(sr.state_path))}


def entry_paths(sysroot: Path) -> list[str]:
    return [deployment_path(e.options) for _, e in bls_entries(sysroot / "efi")]


def missing_boot_files(sysroot: Path) -> list[str]:
    boot = sysroot / "efi"
    return [f for _, e in bls_entries(boot) for f in e.files if not (boot / f.lstrip("/")).is_file()]


# --- a lost state ------------------------------------------------------------------------


@pytest.mark.parametrize("command", [["bootloader", "update"], ["deploy", "{tree}"], ["cleanup", "--keep", "3"]])
def test_a_missing_state_loses_no_deployment(
    sysroot: Path, new_tree: Path, command: list[str]
) -> None:
    before = deps(sysroot)
    data = user_data(sysroot)
    (sysroot / "bootkit/state.json").unlink()
    ok(*[a.format(tree=new_tree) for a in command], "--sysroot", sysroot)
    after = deps(sysroot)
    assert {d.ref for d in before.values()} <= {d.ref for d in after.values()}
    assert {k: v for k, v in user_data(sysroot).items() if k in data} == data
    # The default came back from $BOOT: the newest generation's first entry, deployment 2.
    if command[0] != "deploy":
        assert Sysroot(sysroot).state().default == before[2].ref
    assert not untidy(Sysroot(sysroot))


def test_a_missing_state_still_shows_every_deployment(sysroot: Path) -> None:
    refs = status_refs(Sysroot(sysroot))
    (sysroot / "bootkit/state.json").unlink()
    before = snapshot(sysroot)
    result = ok("status", "--sysroot", sysroot)
    assert status_refs(Sysroot(sysroot)) == refs
    assert "state.json: missing" in result.stderr
    assert snapshot(sysroot) == before


@pytest.mark.parametrize("content", [b"{not json", b'{"generation": 1, "serial": 3, "deployments": "abc"}'])
def test_an_unreadable_state_deletes_nothing_and_says_what_works(
    sysroot: Path, content: bytes
) -> None:
    (sysroot / "bootkit/state.json").write_bytes(content)
    before = snapshot(sysroot)
    result = cli("bootloader", "update", "--sysroot", sysroot)
    assert result.exit_code == 1 and "state.json" in result.stderr
    assert "'bootkit fsck --repair'" in result.stderr
    assert snapshot(sysroot) == before
    run_hints(result.stderr, sysroot)
    ok("bootloader", "update", "--sysroot", sysroot)
    assert len(deps(sysroot)) == 3


# --- what counts as a leftover ---------------------------------------------------------


def test_a_deployment_the_state_does_not_list_is_kept(sysroot: Path, new_tree: Path) -> None:
    """A state restored from a backup: the deployment made since is not deleted."""
    old = (sysroot / "bootkit/state.json").read_bytes()
    fourth = ok("deploy", "--sysroot", sysroot, new_tree, "--json").stdout
    ref = "test/" + json.loads(fourth)["id"]
    (sysroot / "bootkit/state.json").write_bytes(old)
    for command in (["bootloader", "update"], ["cleanup", "--keep", "5"], ["rollback"]):
        ok(*command, "--sysroot", sysroot)
        assert Sysroot(sysroot).tree(Sysroot(sysroot).load(ref)).is_dir(), command
    # It is not in the menu until fsck lists it again; its id is not taken twice.
    assert ref not in status_refs(Sysroot(sysroot))
    fifth = json.loads(ok("deploy", "--sysroot", sysroot, new_tree, "--json").stdout)
    assert fifth["id"].startswith("5-")
    assert cli("fsck", "--repair", "--sysroot", sysroot).exit_code == 1
    assert ref in status_refs(Sysroot(sysroot))


def test_leftovers_of_an_interrupted_deploy_go(sysroot: Path, new_tree: Path) -> None:
    sr = Sysroot(sysroot)
    ddir = sr.meta / "deploy/test/deploy"
    shutil.copytree(sr.tree(deps(sysroot)[1]), ddir / ".staging-123-abcd", symlinks=True)
    # Cut after the tree got its final name, before the state listed it.
    state = sr.state()
    shutil.copytree(sr.tree(deps(sysroot)[1]), ddir / "4-cafe", symlinks=True)
    meta = deps(sysroot)[1].with_changes(id="4-cafe", serial=4)
    meta.save(ddir / "4-cafe.json")
    state.with_changes(in_flight=("test/4-cafe",)).save(sr.state_path)
    ok("bootloader", "update", "--sysroot", sysroot)
    assert sorted(p.name for p in ddir.iterdir()) == sorted(
        n for d in deps(sysroot).values() for n in (d.id, f"{d.id}.json")
    )
    assert not untidy(sr)


def test_an_interrupted_undeploy_finishes_once_no_entry_boots_it(sysroot: Path) -> None:
    sr = Sysroot(sysroot)
    state = sr.state()
    gone = deps(sysroot)[1]
    # Cut after the state stopped listing it, before $BOOT was switched.
    state.with_changes(
        deployments=tuple(r for r in state.deployments if r != gone.ref), in_flight=(gone.ref,)
    ).save(sr.state_path)
    ok("status", "--sysroot", sysroot)
    assert sr.tree(gone).is_dir()  # status changes nothing
    ok("set-default", "--sysroot", sysroot, "3")
    assert not sr.tree(gone).exists() and not sr.metadata_path(gone.os, gone.id).exists()
    assert gone.path not in entry_paths(sysroot)
    assert not untidy(sr)


# --- no way out: damaged boot files and records ---------------------------------------


def _delete_payload(sysroot: Path) -> None:
    d = deps(sysroot)[2]
    shutil.rmtree(sysroot / "efi/bootkit/test" / d.payload)


def _delete_initrd(sysroot: Path) -> None:
    d = deps(sysroot)[2]
    (sysroot / "efi/bootkit/test" / d.payload / "initrd").unlink()


def _delete_metadata(sysroot: Path) -> None:
    d = deps(sysroot)[1]
    Sysroot(sysroot).metadata_path(d.os, d.id).unlink()


def _corrupt_metadata(sysroot: Path) -> None:
    d = deps(sysroot)[1]
    Sysroot(sysroot).metadata_path(d.os, d.id).write_text('{"os": "test", "id": 7}')


def _metadata_leading_out_of_boot(sysroot: Path) -> None:
    d = deps(sysroot)[1]
    data = json.loads(d.to_json())
    data["payload"] = "../../../../etc"
    Sysroot(sysroot).metadata_path(d.os, d.id).write_text(json.dumps(data))


def _delete_tree(sysroot: Path) -> None:
    d = deps(sysroot)[1]
    shutil.rmtree(Sysroot(sysroot).tree(d))


DAMAGE: dict[str, Callable[[Path], None]] = {
    "payload deleted": _delete_payload,
    "initrd deleted": _delete_initrd,
    "metadata deleted": _delete_metadata,
    "metadata corrupt": _corrupt_metadata,
    "metadata leading out of $BOOT": _metadata_leading_out_of_boot,
    "tree deleted": _delete_tree,
}
COMMANDS = [
    ["status"], ["bootloader", "update"], ["rollback"], ["set-default", "3"], ["cleanup", "--keep", "1"],
    ["deploy", "{tree}"], ["undeploy", "3"], ["pin", "3"],
]


def run_hints(stderr: str, sysroot: Path) -> None:
    """Every `bootkit ...` command a hint names runs (fsck: exit 1 means it found problems)."""
    hints = [line for line in stderr.splitlines() if line.startswith("bootkit: hint: ")]
    commands = [c for line in hints for c in re.findall(r"'bootkit ([^']+)'", line)]
    assert commands, f"the hint names no command: {stderr}"
    for command in commands[:1]:
        result = cli(*command.split(), "--sysroot", sysroot)
        assert result.exit_code in ((0, 1) if command.startswith("fsck") else (0,)), (
            command, result.stdout, result.stderr
        )


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: " ".join(c))
@pytest.mark.parametrize("damage", list(DAMAGE))
def test_every_command_works_or_names_a_way_out_that_works(
    sysroot: Path, new_tree: Path, damage: str, command: list[str]
) -> None:
    data = user_data(sysroot)
    DAMAGE[damage](sysroot)
    argv = [a.format(tree=new_tree) for a in command]
    result = cli(*argv, "--sysroot", sysroot)
    if result.exit_code != 0:
        assert result.exit_code == 1 and "Traceback" not in result.stderr, result.stderr
        run_hints(result.stderr, sysroot)
        ok(*argv, "--sysroot", sysroot)
    # No entry that bootkit writes boots a file that is not there, and nothing the admin
    # made is gone (but the /etc of a deployment undeployed on purpose).
    if command[0] not in ("status", "pin"):  # they write no boot configuration
        assert missing_boot_files(sysroot) == []
        assert [p for p in entry_paths(sysroot) if not (sysroot / p.lstrip("/")).is_dir()] == []
    assert kept_all_of(data, sysroot)


@pytest.mark.parametrize("damage", ["metadata deleted", "metadata corrupt", "tree deleted", "payload deleted"])
def test_undeploy_removes_a_damaged_deployment(sysroot: Path, damage: str) -> None:
    victim = deps(sysroot)[1 if "payload" not in damage else 2]
    DAMAGE[damage](sysroot)
    assert f"Removed {victim.ref}" in ok("undeploy", "--sysroot", sysroot, victim.id).stdout
    sr = Sysroot(sysroot)
    assert not sr.deployment_dir(victim.os, victim.id).exists()
    assert not sr.metadata_path(victim.os, victim.id).exists()
    assert victim.ref not in sr.state().deployments
    assert not untidy(sr)


def test_no_entry_for_a_missing_kernel(sysroot: Path) -> None:
    victim = deps(sysroot)[2]
    _delete_payload(sysroot)
    result = ok("bootloader", "update", "--sysroot", sysroot)
    assert f"{victim.ref} is left out of the boot menu" in result.stderr
    assert victim.path not in entry_paths(sysroot)
    assert missing_boot_files(sysroot) == []
    # Still listed: repaired, it comes back.
    assert victim.ref in Sysroot(sysroot).state().deployments
    assert cli("fsck", "--repair", "--sysroot", sysroot).exit_code == 1
    assert victim.path in entry_paths(sysroot)
    assert not untidy(Sysroot(sysroot))


def test_a_redeploy_copies_a_damaged_payload_again(sysroot: Path, template: Path) -> None:
    victim = deps(sysroot)[2]
    payload = sysroot / "efi/bootkit/test" / victim.payload
    _delete_initrd(sysroot)
    (payload / "linux").write_bytes(b"garbage")
    ok("deploy", "--sysroot", sysroot, template.parent / "tree2")
    assert (payload / "linux").read_bytes() == KERNELS[2]
    assert (payload / "initrd").read_bytes() == b"initramfs image\n"
    # The damaged deployment shares the payload, and boots again.
    assert victim.path in entry_paths(sysroot)
    assert not untidy(Sysroot(sysroot))


def test_all_boot_files_missing_looks_like_an_unmounted_boot(sysroot: Path, new_tree: Path) -> None:
    shutil.rmtree(sysroot / "efi/bootkit/test")
    before = snapshot(sysroot)
    line = fails("deploy", "--sysroot", sysroot, new_tree)
    assert "none of the deployments' boot files are in" in line
    assert snapshot(sysroot) == before


# --- a full disk ----------------------------------------------------------------------


def test_a_failed_metadata_write_leaves_nothing_behind(
    sysroot: Path, new_tree: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def full(self: Deployment, path: Path) -> None:
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    before = snapshot(sysroot, exclude=("bootkit/lock", "bootkit/state.json", "bootkit/import-cache.json"))
    with monkeypatch.context() as m:
        m.setattr(Deployment, "save", full)
        line = fails("deploy", "--sysroot", sysroot, new_tree)
    assert line.startswith("bootkit: no space left on the filesystem")
    after = snapshot(sysroot, exclude=("bootkit/lock", "bootkit/state.json", "bootkit/import-cache.json"))
    assert after == before
    assert len(deps(sysroot)) == 3
    ok("deploy", "--sysroot", sysroot, new_tree)
    assert not untidy(Sysroot(sysroot))


# --- config values of the wrong type ---------------------------------------------------


@pytest.mark.parametrize(
    ("key", "value"),
    [("timeout", "x"), ("tries", []), ("uki", "yes"), ("os", 5), ("boot_dir", None),
     ("signing_key", 3), ("timeout", True)],
)
@pytest.mark.parametrize("command", [["status"], ["bootloader", "update"], ["fsck"]])
def test_config_values_of_the_wrong_type(
    sysroot: Path, key: str, value: object, command: list[str]
) -> None:
    path = sysroot / "bootkit/config.json"
    config = json.loads(path.read_text())
    config[key] = value
    path.write_text(json.dumps(config))
    before = snapshot(sysroot)
    result = cli(*command, "--sysroot", sysroot)
    assert result.exit_code == (2 if command == ["fsck"] else 1), result.stderr
    assert "Traceback" not in result.stderr
    assert f"config.json: '{key}' must be" in result.stderr
    assert "bootkit: hint: " in result.stderr
    assert snapshot(sysroot) == before


def test_a_deploy_never_takes_the_id_of_a_deployment_on_disk(
    sysroot: Path, template: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    taken = deps(sysroot)[3]
    before = snapshot(sysroot / "bootkit/deploy/test/deploy")
    # As if the serial counter had gone back: the same tree would get the same id.
    monkeypatch.setattr(Sysroot, "next_serial", lambda self, state: 3)
    line = fails("deploy", "--sysroot", sysroot, template.parent / "tree3")
    assert f"deployment {taken.ref} exists already" in line
    assert snapshot(sysroot / "bootkit/deploy/test/deploy") == before
    monkeypatch.undo()
    fourth = json.loads(ok("deploy", "--sysroot", sysroot, template.parent / "tree3", "--json").stdout)
    assert fourth["id"] == "4-" + taken.id.split("-")[1]
    assert not untidy(Sysroot(sysroot))
