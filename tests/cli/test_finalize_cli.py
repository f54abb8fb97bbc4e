"""Staged updates through the CLI: deploy --stage/--no-stage/--lock, finalize-staged and
what status says about them."""

from __future__ import annotations

import errno
import json
from pathlib import Path

import pytest
from support.helpers import booted, cli, fails, init_sysroot, make_tree, ok, untidy

from bootkit.boot.bootdir import BootDir
from bootkit.records import staged as records
from bootkit.sysroot.layout import Sysroot


@pytest.fixture
def sysroot(tmp_path: Path) -> Path:
    path = tmp_path / "sys"
    init_sysroot(path)
    return path


def _tree(tmp_path: Path, n: int) -> Path:
    return make_tree(tmp_path / f"tree{n}", version=f"{n}.0", kernel=f"kernel {n}\n".encode())


def _deploy(sysroot: Path, tmp_path: Path, n: int, *extra: str) -> dict:
    return json.loads(ok("deploy", "--sysroot", sysroot, _tree(tmp_path, n), "--json", *extra).stdout)


def _status(sysroot: Path) -> dict:
    return json.loads(ok("status", "--sysroot", sysroot, "--json").stdout)


def test_a_deploy_inside_the_running_system_is_staged_and_finalized(
    sysroot: Path, tmp_path: Path
) -> None:
    one = _deploy(sysroot, tmp_path, 1)
    with booted(one["path"]):
        out = ok("deploy", "--sysroot", sysroot, _tree(tmp_path, 2)).stdout
        assert out.startswith("Staged test/") and "at shutdown" in out
        found = _status(sysroot)
        assert [d["id"] for d in found["deployments"]] == [one["id"]]
        staged = found["staged"]
        assert set(staged) == {"ref", "path", "version", "title", "locked", "staged_at", "image"}
        assert staged["version"] == "2.0" and staged["locked"] is False
        assert found["finalize_failure"] is None
        text = ok("status", "--sysroot", sysroot).stdout
        assert f"staged {staged['ref']}" in text and "at shutdown" in text
        done = ok("finalize-staged", "--sysroot", sysroot, "--json").stdout
        assert json.loads(done) == {"finalized": staged["ref"]}
    found = _status(sysroot)
    assert found["staged"] is None and found["deployments"][0]["version"] == "2.0"
    assert ok("finalize-staged", "--sysroot", sysroot).stdout == "Nothing is staged.\n"
    assert untidy(Sysroot(sysroot)) == []


def test_deploy_json_of_a_staged_deployment(sysroot: Path, tmp_path: Path) -> None:
    one = _deploy(sysroot, tmp_path, 1)
    with booted(one["path"]):
        out = _deploy(sysroot, tmp_path, 2, "--lock")
    assert out["staged"]["locked"] is True and out["staged"]["version"] == "2.0"
    no = _deploy(sysroot, tmp_path, 3, "--no-stage")
    assert no["default"] is True and no["version"] == "3.0"  # and it replaced the staged one
    assert _status(sysroot)["staged"] is None


def test_lock_unlock_now_and_the_errors_with_hints(sysroot: Path, tmp_path: Path) -> None:
    one = _deploy(sysroot, tmp_path, 1)
    assert "only a staged deployment can be locked" in fails(
        "deploy", "--sysroot", sysroot, _tree(tmp_path, 2), "--lock"
    )
    result = cli("deploy", "--sysroot", sysroot, _tree(tmp_path, 3), "--lock")
    assert "hint: add --stage" in result.stderr
    with booted(one["path"]):
        ok("deploy", "--sysroot", sysroot, _tree(tmp_path, 4), "--lock")
        assert "locked" in ok("status", "--sysroot", sysroot).stdout
        assert "is locked" in fails("finalize-staged", "--sysroot", sysroot)
        result = cli("finalize-staged", "--sysroot", sysroot)
        assert "--unlock" in result.stderr and "--now" in result.stderr
        assert "Unlocked" in ok("finalize-staged", "--sysroot", sysroot, "--unlock").stdout
        assert "Finalized" in ok("finalize-staged", "--sysroot", sysroot).stdout
        ok("deploy", "--sysroot", sysroot, _tree(tmp_path, 5), "--lock")
        assert "Finalized" in ok("finalize-staged", "--sysroot", sysroot, "--now").stdout
    assert "do not go together" in fails("finalize-staged", "--sysroot", sysroot, "--now", "--boot")
    assert "Nothing is staged" in ok("finalize-staged", "--sysroot", sysroot, "--unlock").stdout


def test_at_shutdown_a_locked_deployment_is_discarded(sysroot: Path, tmp_path: Path) -> None:
    one = _deploy(sysroot, tmp_path, 1)
    with booted(one["path"]):
        ok("deploy", "--sysroot", sysroot, _tree(tmp_path, 2), "--lock")
        # What systemd sets for a unit's stop command.
        result = ok("finalize-staged", "--sysroot", sysroot, env={"SERVICE_RESULT": "success"})
    assert "discarded" in result.stderr
    found = _status(sysroot)
    assert found["staged"] is None and found["finalize_failure"] is None
    assert len(found["deployments"]) == 1


def test_a_failure_is_shown_by_check_and_status_until_forgotten(
    sysroot: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    one = _deploy(sysroot, tmp_path, 1)
    assert ok("finalize-staged", "--sysroot", sysroot, "--check").stdout == ""
    with booted(one["path"]):
        ok("deploy", "--sysroot", sysroot, _tree(tmp_path, 2))
        with monkeypatch.context() as m:
            def full(*args: object, **kw: object) -> None:
                raise OSError(errno.ENOSPC, "No space left on device")

            m.setattr(BootDir, "switch", full)
            assert "nothing was switched" in fails("finalize-staged", "--sysroot", sysroot)
    line = fails("finalize-staged", "--sysroot", sysroot, "--check")
    assert "failed" in line and "no space left" in line
    result = cli("finalize-staged", "--sysroot", sysroot, "--check", "--json")
    assert result.exit_code == 1
    assert "no space left" in json.loads(result.stdout)["finalize_failure"]["reason"]
    found = _status(sysroot)
    failure = found["finalize_failure"]
    assert set(failure) == {"ref", "version", "failed_at", "reason"}
    assert failure["version"] == "2.0" and [d["id"] for d in found["deployments"]] == [one["id"]]
    warning = cli("status", "--sysroot", sysroot).stderr
    assert "warning: the update to" in warning and "--forget-failure" in warning
    assert "Forgot" in ok("finalize-staged", "--sysroot", sysroot, "--forget-failure").stdout
    ok("finalize-staged", "--sysroot", sysroot, "--check")
    assert _status(sysroot)["finalize_failure"] is None


def test_boot_removes_an_unfinalized_staging_and_never_fails(sysroot: Path, tmp_path: Path) -> None:
    one = _deploy(sysroot, tmp_path, 1)
    with booted(one["path"]):
        ok("deploy", "--sysroot", sysroot, _tree(tmp_path, 2))
    records.run_record_path().unlink()  # rebooted
    result = ok("finalize-staged", "--sysroot", sysroot, "--boot")
    assert "was not applied" in result.stderr and "Removed test/" in result.stdout
    assert "Nothing left" in ok("finalize-staged", "--sysroot", sysroot, "--boot").stdout
    assert untidy(Sysroot(sysroot)) == []
    # Not even a sysroot: a warning, exit 0.
    result = ok("finalize-staged", "--sysroot", tmp_path / "nothing", "--boot")
    assert "warning" in result.stderr


def test_help_explains_the_options() -> None:
    text = ok("finalize-staged", "--help").stdout
    for option in ("--now", "--unlock", "--boot", "--check", "--forget-failure", "--json"):
        assert option in text
    text = ok("deploy", "--help").stdout
    assert "--stage / --no-stage" in text and "--lock" in text and "shutdown" in text
