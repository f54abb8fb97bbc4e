"""Staged deployments: the merge source, staging, finalizing, failing, and what every
other command does with a staged deployment."""

from __future__ import annotations

import errno
import json
import logging
from pathlib import Path

import pytest
from support.helpers import (
    bls_entries,
    booted,
    bootloader_files,
    deploy_tree,
    grub_slot_text,
    init_sysroot,
    numbered_tree,
    snapshot,
    status_refs,
    untidy,
)

from bootkit.boot.bootdir import BootDir
from bootkit.boot.entries import options_for
from bootkit.boot.payloads import Payload
from bootkit.errors import BootkitError
from bootkit.records import staged as records
from bootkit.records.deployment import Deployment
from bootkit.sysroot import operations, staged
from bootkit.sysroot.finalize import finalize
from bootkit.sysroot.kargs import KargsEdit, change_kargs
from bootkit.sysroot.layout import Sysroot
from bootkit.sysroot.status import status


@pytest.fixture(params=["systemd-boot", "grub"])
def sr(request: pytest.FixtureRequest, tmp_path: Path) -> Sysroot:
    return init_sysroot(tmp_path / "sys", request.param)



def _two(sr: Sysroot, tmp_path: Path) -> tuple[Deployment, Deployment]:
    """Deployments 1 and 2 (the default), each with an /etc edit of its own."""
    one = deploy_tree(sr, numbered_tree(tmp_path, 1), kargs=["one=1"])
    two = deploy_tree(sr, numbered_tree(tmp_path, 2), kargs=["two=2"])
    (sr.tree(one) / "etc/edited").write_text("in one\n")
    (sr.tree(two) / "etc/edited").write_text("in two\n")
    return one, two



# --- the merge source ----------------------------------------------------------------


def test_a_new_deployment_follows_the_booted_one_when_it_is_the_default(
    sr: Sysroot, tmp_path: Path
) -> None:
    _one, two = _two(sr, tmp_path)
    with booted(two.path):
        three = deploy_tree(sr, numbered_tree(tmp_path, 3), stage=False)
    assert (sr.tree(three) / "etc/edited").read_text() == "in two\n"
    assert three.kargs == ("two=2",)


def test_a_new_deployment_follows_the_booted_one_when_it_is_not_the_default(
    sr: Sysroot, tmp_path: Path
) -> None:
    one, two = _two(sr, tmp_path)
    assert sr.state().default == two.ref
    with booted(one.path):
        three = deploy_tree(sr, numbered_tree(tmp_path, 3), stage=False)
    assert (sr.tree(three) / "etc/edited").read_text() == "in one\n"
    assert three.kargs == ("one=1",)


def test_outside_a_booted_deployment_the_default_is_followed(sr: Sysroot, tmp_path: Path) -> None:
    one, _second = _two(sr, tmp_path)
    operations.set_default(sr, one.id)
    three = deploy_tree(sr, numbered_tree(tmp_path, 3))
    assert (sr.tree(three) / "etc/edited").read_text() == "in one\n"
    # Booted into another OS's deployment: this OS's default is followed.
    with booted("/bootkit/deploy/other/deploy/1-abc"):
        four = deploy_tree(sr, numbered_tree(tmp_path, 4))
    assert (sr.tree(four) / "etc/edited").read_text() == "in one\n"
    assert sr.state().default == four.ref  # not staged: not booted into this sysroot


# --- staging ---------------------------------------------------------------------------


def test_inside_a_booted_deployment_a_deploy_is_staged_and_switches_nothing(
    sr: Sysroot, tmp_path: Path
) -> None:
    one, two = _two(sr, tmp_path)
    before_state = sr.state()
    before_boot = bootloader_files(sr)
    with booted(two.path):
        three = deploy_tree(sr, numbered_tree(tmp_path, 3), tries=5)
        state = sr.state()
        assert state.deployments == before_state.deployments
        assert state.default == two.ref and three.ref in state.in_flight
        assert bootloader_files(sr) == before_boot
        assert status_refs(sr) == [two.ref, one.ref]
        # Everything but the switch is on disk: tree (without its live /etc yet),
        # metadata, payload.
        assert (sr.tree(three) / "usr/etc/hostname").is_file()
        assert not (sr.tree(three) / "etc").exists()
        assert sr.metadata_path(three.os, three.id).is_file()
        assert Payload(three.os, three.payload).dir(sr.boot_path).is_dir()
        rec = records.load_run_record()
        assert rec is not None and rec.ref == three.ref and rec.booted == two.ref
        assert (rec.make_default, rec.tries, rec.locked) == (True, 5, False)
        assert Path(rec.sysroot) == sr.path.resolve()
        marker = records.marker_path(sr.boot_path)
        assert marker.stat().st_size == records.MARKER_SIZE
        assert json.loads(marker.read_text())["ref"] == three.ref
        found = status(sr)
        assert found.staged is not None and found.staged.ref == three.ref
        assert found.staged.version == "3" and not found.staged.locked
        assert found.find(three.ref) is None and found.finalize_failure is None


def test_stage_and_lock_choices(sr: Sysroot, tmp_path: Path) -> None:
    _one, two = _two(sr, tmp_path)
    # Asked for, staging happens outside a booted deployment too.
    three = deploy_tree(sr, numbered_tree(tmp_path, 3), stage=True, lock=True)
    assert three.ref not in sr.state().deployments
    rec = records.load_run_record()
    assert rec is not None and rec.locked and rec.booted is None
    with pytest.raises(BootkitError, match="only a staged deployment can be locked"):
        deploy_tree(sr, numbered_tree(tmp_path, 4), lock=True)  # would switch at once
    with pytest.raises(BootkitError, match="only a staged deployment can be locked"):
        deploy_tree(sr, numbered_tree(tmp_path, 5), stage=False, lock=True)
    with booted(two.path):
        four = deploy_tree(sr, numbered_tree(tmp_path, 6), stage=False)
    assert sr.state().default == four.ref


# --- finalizing ------------------------------------------------------------------------


def test_finalize_merges_etc_from_the_booted_deployment_as_it_is_then(
    sr: Sysroot, tmp_path: Path
) -> None:
    one, two = _two(sr, tmp_path)
    with booted(two.path):
        three = deploy_tree(sr, numbered_tree(tmp_path, 3))
        (sr.tree(two) / "etc/after-staging").write_text("changed later\n")
        (sr.tree(two) / "etc/edited").write_text("in two, changed later\n")
        done = finalize(sr)
    assert done is not None and done.ref == three.ref
    assert (sr.tree(three) / "etc/after-staging").read_text() == "changed later\n"
    assert (sr.tree(three) / "etc/edited").read_text() == "in two, changed later\n"
    assert status_refs(sr) == [three.ref, two.ref, one.ref]
    assert sr.state().default == three.ref
    assert records.load_run_record() is None
    assert not records.marker_path(sr.boot_path).exists()
    assert status(sr).staged is None
    assert untidy(sr) == []
    assert finalize(sr) is None  # nothing staged any more


def test_finalize_takes_the_admins_kernel_arguments_as_they_are_then(
    sr: Sysroot, tmp_path: Path
) -> None:
    _, two = _two(sr, tmp_path)
    with booted(two.path):
        three = deploy_tree(sr, numbered_tree(tmp_path, 3))
        assert three.kargs == ("two=2",)
        change_kargs(sr, None, KargsEdit(append=("quiet",)))
        done = finalize(sr)
    assert done is not None and done.ref == three.ref
    assert sr.load(three.ref).kargs == ("two=2", "quiet")
    assert options_for(sr.config, sr.load(three.ref)).endswith("two=2 quiet")
    menu = "".join(e.options for _, e in bls_entries(sr.boot_path))
    assert "two=2 quiet" in menu + (grub_slot_text(sr.boot_path) or "")
    # Arguments the deploy named stay as they were named.
    with booted(three.path):
        four_given = deploy_tree(sr, numbered_tree(tmp_path, 4), kargs=["given=1"])
        change_kargs(sr, None, KargsEdit(append=("later",)))
        finalize(sr)
    assert sr.load(four_given.ref).kargs == ("given=1",)


def test_finalize_keeps_the_default_for_a_no_default_deploy(sr: Sysroot, tmp_path: Path) -> None:
    one, two = _two(sr, tmp_path)
    with booted(one.path):
        three = deploy_tree(sr, numbered_tree(tmp_path, 3), make_default=False)
        finalize(sr)
    assert sr.state().default == two.ref and three.ref in sr.state().deployments
    assert (sr.tree(three) / "etc/edited").read_text() == "in one\n"


def test_a_locked_staged_deployment_is_refused_until_unlocked_or_forced(
    sr: Sysroot, tmp_path: Path
) -> None:
    _one, two = _two(sr, tmp_path)
    with booted(two.path):
        three = deploy_tree(sr, numbered_tree(tmp_path, 3), lock=True)
        before = snapshot(sr.path)
        with pytest.raises(BootkitError, match="is locked") as err:
            finalize(sr)
        assert "--unlock" in (err.value.hint or "") and "--now" in (err.value.hint or "")
        assert snapshot(sr.path) == before
        rec = staged.unlock(sr)
        assert rec is not None and not rec.locked
        assert finalize(sr) is not None
        four = deploy_tree(sr, numbered_tree(tmp_path, 4), lock=True)
        assert finalize(sr, now=True) is not None
    assert status_refs(sr)[:2] == [four.ref, three.ref]
    assert untidy(sr) == []


def test_at_shutdown_a_locked_deployment_is_discarded_without_a_failure(
    sr: Sysroot, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    _one, two = _two(sr, tmp_path)
    before = bootloader_files(sr)
    with booted(two.path):
        three = deploy_tree(sr, numbered_tree(tmp_path, 3), lock=True)
        with caplog.at_level(logging.INFO, logger="bootkit"):
            assert finalize(sr, at_shutdown=True) is None
    assert "locked" in caplog.text and three.ref in caplog.text
    assert not sr.deployment_dir(three.os, three.id).exists()
    assert records.FinalizeFailure.load(sr.boot_path) is None
    assert bootloader_files(sr) == before
    assert untidy(sr) == []


def _fail_switch(monkeypatch: pytest.MonkeyPatch) -> None:
    def full(*args: object, **kw: object) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(BootDir, "switch", full)


def test_a_failed_finalize_switches_nothing_and_keeps_the_reason_on_boot(
    sr: Sysroot, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    one, two = _two(sr, tmp_path)
    before = bootloader_files(sr)
    with booted(two.path):
        three = deploy_tree(sr, numbered_tree(tmp_path, 3))
        with monkeypatch.context() as m:
            _fail_switch(m)
            with pytest.raises(BootkitError, match="nothing was switched") as err:
                finalize(sr)
    assert "no space left" in err.value.message
    assert "finalize-failed.json" in (err.value.hint or "")
    assert bootloader_files(sr) == before
    assert status_refs(sr) == [two.ref, one.ref] and sr.state().default == two.ref
    failure = records.FinalizeFailure.load(sr.boot_path)
    assert failure is not None and failure.ref == three.ref and failure.version == "3"
    assert "no space left" in failure.reason and failure.failed_at > 0
    # The staged deployment is gone, all of it.
    assert not records.marker_path(sr.boot_path).exists()
    assert records.load_run_record() is None
    assert not sr.deployment_dir(three.os, three.id).exists()
    assert not Payload(three.os, three.payload).dir(sr.boot_path).exists()
    assert untidy(sr) == []
    found = status(sr)
    assert found.finalize_failure == failure and found.staged is None
    assert any("was not applied" in w and "no space left" in w for w in found.warnings())
    # A later update replaces the record.
    deploy_tree(sr, numbered_tree(tmp_path, 4))
    assert records.FinalizeFailure.load(sr.boot_path) is None


def test_a_finalize_that_fails_merging_etc_is_recorded_too(
    sr: Sysroot, tmp_path: Path
) -> None:
    one, two = _two(sr, tmp_path)
    with booted(two.path):
        three = deploy_tree(sr, numbered_tree(tmp_path, 3, files={"usr/etc/conflict/file": "x"}))
        (sr.tree(two) / "etc/conflict").write_text("a file where the new tree has a directory\n")
        (sr.tree(two) / "usr/etc/conflict").write_text("a file in the old defaults\n")
        with pytest.raises(BootkitError, match="nothing was switched"):
            finalize(sr)
    failure = records.FinalizeFailure.load(sr.boot_path)
    assert failure is not None and failure.ref == three.ref and "conflict" in failure.reason
    assert status_refs(sr) == [two.ref, one.ref]
    assert untidy(sr) == []


def test_the_failure_record_is_written_into_the_marker_in_place(tmp_path: Path) -> None:
    boot = tmp_path / "boot"
    boot.mkdir()
    rec = records.StagedRecord(sysroot="/", ref="test/3-abc", staged_at=1.0)
    records.write_marker(boot, rec)
    inode = records.marker_path(boot).stat().st_ino
    failure = records.FinalizeFailure("test/3-abc", "3", 2.0, "x" * 10000)
    records.record_failure(boot, failure)
    path = records.failure_path(boot)
    assert path.stat().st_ino == inode and path.stat().st_size == records.MARKER_SIZE
    loaded = records.FinalizeFailure.load(boot)
    assert loaded is not None and loaded.ref == "test/3-abc" and loaded.reason.endswith("...")
    assert not records.marker_path(boot).exists()
    assert records.forget_failure(boot) and records.FinalizeFailure.load(boot) is None


# --- a machine that went down without finalizing --------------------------------------------


def test_at_boot_what_an_unfinalized_staging_left_is_removed(
    sr: Sysroot, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    _one, two = _two(sr, tmp_path)
    before = bootloader_files(sr)
    menu = status_refs(sr)
    with booted(two.path):
        three = deploy_tree(sr, numbered_tree(tmp_path, 3))
    records.run_record_path().unlink()  # the reboot empties /run
    with booted(two.path), caplog.at_level(logging.WARNING, logger="bootkit"):
        assert staged.cleanup_at_boot(sr) == three.ref
    assert "was not applied: the system stopped without finalizing it" in caplog.text
    assert bootloader_files(sr) == before and status_refs(sr) == menu
    assert not sr.deployment_dir(three.os, three.id).exists()
    assert not sr.metadata_path(three.os, three.id).exists()
    assert not Payload(three.os, three.payload).dir(sr.boot_path).exists()
    assert not records.marker_path(sr.boot_path).exists()
    assert sr.state().in_flight == ()
    assert untidy(sr) == []


def test_at_boot_nothing_to_do_takes_no_lock(
    sr: Sysroot, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _two(sr, tmp_path)

    def no_lock(self: Sysroot) -> None:
        raise AssertionError("took the lock")

    monkeypatch.setattr(Sysroot, "locked", no_lock)
    before = snapshot(sr.path)
    assert staged.cleanup_at_boot(sr) is None
    assert snapshot(sr.path) == before


def test_at_boot_a_deployment_staged_since_is_kept(sr: Sysroot, tmp_path: Path) -> None:
    _one, two = _two(sr, tmp_path)
    with booted(two.path):
        three = deploy_tree(sr, numbered_tree(tmp_path, 3))
        assert staged.cleanup_at_boot(sr) is None
        assert sr.deployment_dir(three.os, three.id).is_dir()
        assert finalize(sr) is not None


def test_at_boot_a_marker_left_by_a_finished_finalize_only_goes(
    sr: Sysroot, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    _, two = _two(sr, tmp_path)
    with booted(two.path):
        three = deploy_tree(sr, numbered_tree(tmp_path, 3))
        marker = records.marker_path(sr.boot_path).read_bytes()
        finalize(sr)
    records.marker_path(sr.boot_path).write_bytes(marker)  # cut before it was removed
    with caplog.at_level(logging.WARNING, logger="bootkit"):
        assert staged.cleanup_at_boot(sr) is None
    assert "not applied" not in caplog.text
    assert not records.marker_path(sr.boot_path).exists()
    assert status_refs(sr)[0] == three.ref and untidy(sr) == []
