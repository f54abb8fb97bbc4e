"""What the other commands do with a staged deployment: keep it, or discard it and say so."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from support.helpers import (
    booted,
    bootloader_files,
    deploy_tree,
    init_sysroot,
    numbered_tree,
    status_refs,
    untidy,
)

from bootkit import contract
from bootkit.boot.payloads import Payload
from bootkit.records import staged as records
from bootkit.records.deployment import Deployment
from bootkit.sysroot import cleanup, operations, transaction
from bootkit.sysroot.finalize import finalize
from bootkit.sysroot.fsck import fsck
from bootkit.sysroot.layout import Sysroot
from bootkit.sysroot.status import status


@pytest.fixture(params=["systemd-boot", "grub"])
def sr(request: pytest.FixtureRequest, tmp_path: Path) -> Sysroot:
    return init_sysroot(tmp_path / "sys", request.param)



def _two(sr: Sysroot, tmp_path: Path) -> tuple[Deployment, Deployment]:
    return deploy_tree(sr, numbered_tree(tmp_path, 1)), deploy_tree(sr, numbered_tree(tmp_path, 2))



# --- what other commands do with it ----------------------------------------------------------


def _staged_is_intact(sr: Sysroot, dep: Deployment) -> None:
    assert sr.deployment_dir(dep.os, dep.id).is_dir()
    assert sr.metadata_path(dep.os, dep.id).is_file()
    assert Payload(dep.os, dep.payload).dir(sr.boot_path).is_dir()
    assert records.marker_path(sr.boot_path).is_file()
    assert status(sr).staged is not None


OTHER_COMMANDS = {
    "set-default": lambda sr, one: operations.set_default(sr, one.id),
    "pin": lambda sr, one: operations.set_pinned(sr, one.id, True),
    "cleanup": lambda sr, one: cleanup.cleanup(sr, keep=1),
    "undeploy another": lambda sr, one: cleanup.undeploy(sr, one.id),
    "fsck": lambda sr, one: fsck(sr, repair=True),
    "bootloader update": lambda sr, one: operations.bootloader_update(sr),
    "repair": lambda sr, one: transaction.repair(sr),
}


@pytest.mark.parametrize("command", OTHER_COMMANDS)
def test_other_commands_keep_the_staged_deployment(
    sr: Sysroot, tmp_path: Path, command: str
) -> None:
    one, two = _two(sr, tmp_path)
    with booted(two.path):
        three = deploy_tree(sr, numbered_tree(tmp_path, 3))
        result = OTHER_COMMANDS[command](sr, one)
        if command == "fsck":
            assert result.problems == [], result.problems  # type: ignore[union-attr]
        _staged_is_intact(sr, three)
        assert finalize(sr) is not None
    assert status_refs(sr)[0] == three.ref
    assert untidy(sr) == []


def test_rollback_discards_the_staged_deployment(
    sr: Sysroot, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    one, two = _two(sr, tmp_path)
    with booted(two.path):
        three = deploy_tree(sr, numbered_tree(tmp_path, 3))
        with caplog.at_level(logging.INFO, logger="bootkit"):
            operations.rollback(sr)
    assert f"the staged deployment {three.ref} is discarded" in caplog.text
    assert status_refs(sr) == [one.ref, two.ref]
    assert not sr.deployment_dir(three.os, three.id).exists()
    assert not records.marker_path(sr.boot_path).exists()
    assert records.load_run_record() is None
    assert untidy(sr) == []


def test_a_new_deploy_replaces_the_staged_deployment(
    sr: Sysroot, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    one, two = _two(sr, tmp_path)
    with booted(two.path):
        three = deploy_tree(sr, numbered_tree(tmp_path, 3))
        with caplog.at_level(logging.INFO, logger="bootkit"):
            four = deploy_tree(sr, numbered_tree(tmp_path, 4))
        assert f"{three.ref} is discarded: a new deploy replaces it" in caplog.text
        assert not sr.deployment_dir(three.os, three.id).exists()
        assert not Payload(three.os, three.payload).dir(sr.boot_path).exists()
        rec = records.load_run_record()
        assert rec is not None and rec.ref == four.ref
        finalize(sr)
    assert status_refs(sr) == [four.ref, two.ref, one.ref]
    assert untidy(sr) == []


def test_undeploying_the_staged_deployment_discards_it(sr: Sysroot, tmp_path: Path) -> None:
    _one, two = _two(sr, tmp_path)
    before = bootloader_files(sr)
    with booted(two.path):
        three = deploy_tree(sr, numbered_tree(tmp_path, 3))
        assert cleanup.undeploy(sr, three.id) == three.ref
    assert bootloader_files(sr) == before
    assert records.load_run_record() is None and status(sr).staged is None
    assert not records.marker_path(sr.boot_path).exists()
    assert untidy(sr) == []


def test_a_run_record_of_another_sysroot_is_ignored(sr: Sysroot, tmp_path: Path) -> None:
    _one, two = _two(sr, tmp_path)
    with booted(two.path):
        three = deploy_tree(sr, numbered_tree(tmp_path, 3))
    other = init_sysroot(tmp_path / "other")
    deploy_tree(other, numbered_tree(tmp_path, 9))
    assert finalize(other) is None and status(other).staged is None
    assert records.load_run_record() is not None
    assert Path("/run/bootkit") != contract.RUN_DIR
    assert status(sr).staged is not None and three.ref in sr.state().in_flight


def test_a_lost_state_keeps_the_staged_deployment_out_of_the_menu(
    sr: Sysroot, tmp_path: Path
) -> None:
    one, two = _two(sr, tmp_path)
    with booted(two.path):
        three = deploy_tree(sr, numbered_tree(tmp_path, 3))
        sr.state_path.unlink()
        assert status_refs(sr) == [two.ref, one.ref]
        assert status(sr).staged is not None
        transaction.repair(sr)  # writes the state again
        assert three.ref in sr.state().in_flight and three.ref not in sr.state().deployments
        assert finalize(sr) is not None
    assert status_refs(sr) == [three.ref, two.ref, one.ref]
    assert (sr.tree(three) / "etc/hostname").is_file()
    assert untidy(sr) == []


def test_an_unreadable_run_record_names_nothing(sr: Sysroot, tmp_path: Path) -> None:
    one, two = _two(sr, tmp_path)
    with booted(two.path):
        three = deploy_tree(sr, numbered_tree(tmp_path, 3))
    records.run_record_path().write_text("{not json")
    assert status(sr).staged is None
    assert finalize(sr) is None and not records.run_record_path().exists()
    operations.bootloader_update(sr)  # the staged deployment is a leftover now
    assert not sr.deployment_dir(three.os, three.id).exists()
    assert status_refs(sr) == [two.ref, one.ref]
    assert untidy(sr) == []


def test_a_discarded_staged_deployments_serial_is_not_used_again(
    sr: Sysroot, tmp_path: Path
) -> None:
    _, two = _two(sr, tmp_path)
    with booted(two.path):
        three = deploy_tree(sr, numbered_tree(tmp_path, 3))
        four = deploy_tree(sr, numbered_tree(tmp_path, 4))
    assert (three.serial, four.serial) == (3, 4)
