"""Changing the admin's kernel arguments: the edit rules, and a switch that fails or is cut."""

from __future__ import annotations

from pathlib import Path
from unittest import mock

import pytest
from support.helpers import bls_entries, init_sysroot, make_tree, untidy

from bootkit.boot.bootdir import BootDir
from bootkit.errors import BootkitError
from bootkit.records.deployment import Deployment
from bootkit.sysroot import transaction
from bootkit.sysroot.deploy import DeployRequest, deploy
from bootkit.sysroot.imageargs import KARGS_DIR
from bootkit.sysroot.kargs import KargsEdit, change_kargs, edited
from bootkit.sysroot.layout import Sysroot

DEP = Deployment(
    os="test", id="1-abc", version="1", source="x", kernel_version="6.1.0", payload="p",
    title="T", created=0.0, serial=1,
    image_kargs=("quiet", "console=tty0"),
    kargs=("console=ttyS0", "console=ttyS1", "loglevel=7", "nomodeset"),
)


def edit(**changes: tuple[str, ...]) -> tuple[str, ...]:
    return edited(DEP, KargsEdit(**changes))


def test_append_adds_at_the_end_once() -> None:
    assert edit(append=("splash", "splash", "console=ttyS0", "console=tty1"))[-2:] == (
        "splash", "console=tty1"
    )
    assert edit(append=("loglevel=7",)) == DEP.kargs


def test_delete_an_argument_or_every_one_of_a_name() -> None:
    assert edit(delete=("console=ttyS1",)) == ("console=ttyS0", "loglevel=7", "nomodeset")
    assert edit(delete=("console",)) == ("loglevel=7", "nomodeset")
    assert edit(delete=("nomodeset",)) == DEP.kargs[:3]


def test_replace_by_name_or_by_old_value() -> None:
    assert edit(replace=("loglevel=3",)) == ("console=ttyS0", "console=ttyS1", "loglevel=3",
                                             "nomodeset")
    assert edit(replace=("console=ttyS1=ttyS2,115200",))[1] == "console=ttyS2,115200"
    assert edit(replace=("nomodeset=1",))[3] == "nomodeset=1"
    # NEW may hold "=".
    assert edit(replace=("loglevel=7=a=b",))[2] == "loglevel=a=b"


def test_order_is_delete_replace_append() -> None:
    assert edit(append=("loglevel=1",), delete=("loglevel",), replace=("console=ttyS0=hvc0",)) == (
        "console=hvc0", "console=ttyS1", "nomodeset", "loglevel=1"
    )


@pytest.mark.parametrize(
    ("changes", "message", "hint"),
    [
        ({"delete": ("quiet",)}, "the image ships it", "--append NAME=VALUE"),
        ({"delete": ("console=tty0",)}, "the image ships it", "overrides its value"),
        ({"replace": ("quiet=1",)}, "the image ships it", "overrides its value"),
        ({"delete": ("splash",)}, "no such kernel argument", "'bootkit kargs' lists them"),
        ({"replace": ("console=tty2",)}, "the admin gave it 2 times", "console=OLD=NEW"),
        ({"replace": ("console=ttyS9=x",)}, "no such kernel argument", "--append"),
        ({"replace": ("loglevel",)}, "invalid replacement", "NAME=NEW"),
        ({"replace": ("=3",)}, "invalid replacement", "NAME=NEW"),
        ({"append": ("root=/dev/sda",)}, "bootkit sets it itself", "root="),
        ({"append": ("a b",)}, "holds a blank", "one kernel argument"),
        ({"replace": ("loglevel=$x",)}, "GRUB expands variables", None),
    ],
)
def test_refused_edits_say_why(changes: dict, message: str, hint: str | None) -> None:
    with pytest.raises(BootkitError) as err:
        edit(**changes)
    assert message in err.value.message
    if hint is not None:
        assert err.value.hint is not None and hint in err.value.hint


# --- the switch ------------------------------------------------------------------


@pytest.fixture(params=["systemd-boot", "grub"])
def sr(request: pytest.FixtureRequest, tmp_path: Path) -> Sysroot:
    sr = init_sysroot(tmp_path / "sys", request.param)
    tree = make_tree(tmp_path / "tree", files={f"{KARGS_DIR}/10-a.conf": "quiet\n"})
    deploy(sr, DeployRequest(tree, kargs=("console=ttyS0",)))
    return sr


def options(sr: Sysroot) -> list[str]:
    return [e.options.split(" ", 3)[3] for _, e in bls_entries(sr.boot_path)]


def test_a_change_is_one_new_generation(sr: Sysroot) -> None:
    generation = sr.state().generation
    before, after = change_kargs(sr, None, KargsEdit(append=("loglevel=3",)))
    assert before.kargs == ("console=ttyS0",) and after.kargs == ("console=ttyS0", "loglevel=3")
    assert sr.load(after.ref) == after
    assert options(sr) == ["quiet console=ttyS0 loglevel=3"]
    assert sr.boot.is_current(sr.boot.view(), sr.state().generation)
    assert sr.state().generation > generation
    assert untidy(sr) == []


def test_no_change_writes_nothing(sr: Sysroot) -> None:
    state = sr.state()
    before, after = change_kargs(sr, None, KargsEdit(append=("console=ttyS0",)))
    assert before == after and sr.state() == state


def test_a_failed_switch_restores_the_old_metadata(sr: Sysroot) -> None:
    dep = sr.deployments()[0]
    with mock.patch.object(BootDir, "switch", side_effect=OSError(28, "No space left")), \
            pytest.raises(OSError):
        change_kargs(sr, None, KargsEdit(append=("loglevel=3",)))
    assert sr.load(dep.ref) == dep
    assert options(sr) == ["quiet console=ttyS0"]
    # The state is ahead of $BOOT, so the next command writes the old arguments again.
    assert transaction.repair(sr)
    assert options(sr) == ["quiet console=ttyS0"] and untidy(sr) == []


def test_a_failure_after_the_switch_still_leaves_metadata_and_boot_agreeing(sr: Sysroot) -> None:
    dep = sr.deployments()[0]
    with mock.patch("bootkit.sysroot.transaction.payloads.remove_unreferenced",
                    side_effect=OSError(5, "I/O error")), pytest.raises(OSError):
        change_kargs(sr, None, KargsEdit(append=("loglevel=3",)))
    assert sr.load(dep.ref) == dep
    assert transaction.repair(sr)
    assert options(sr) == ["quiet console=ttyS0"] and untidy(sr) == []


@pytest.mark.parametrize("cut_after", ["state", "metadata"])
def test_a_crash_midway_is_finished_by_the_next_command(sr: Sysroot, cut_after: str) -> None:
    """A power cut before the switch: the next command makes $BOOT show the metadata."""
    dep = sr.deployments()[0]

    class PowerCut(BaseException):
        pass

    real_save = Deployment.save
    saved: list[Deployment] = []

    def save(self: Deployment, path: Path) -> None:
        # The power goes before (state) or right after (metadata) the new metadata is
        # written; nothing runs after that, the restore neither.
        if cut_after == "metadata" and not saved:
            saved.append(self)
            real_save(self, path)
        raise PowerCut

    with mock.patch.object(Deployment, "save", save), pytest.raises(PowerCut):
        change_kargs(sr, None, KargsEdit(append=("loglevel=3",)))
    # No restore ran (the process died): what the next command finds on disk.
    assert options(sr) == ["quiet console=ttyS0"]
    assert transaction.repair(sr)
    want = "quiet console=ttyS0" + (" loglevel=3" if cut_after == "metadata" else "")
    assert options(sr) == [want]
    assert sr.load(dep.ref).kargs == tuple(want.split()[1:])
    assert untidy(sr) == []
