"""The shell scripts speak bootkit.contract: the same deployment paths, kernel argument,
name rule and grubenv variables as the Python code.

These read the scripts as text; tests/initramfs/test_prepare_root.py and
tests/boot/test_bootcount.py run them against Python's answers as well.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from support.helpers import REPO

from bootkit import contract

HOOK = REPO / "dracut/90bootkit/bootkit-prepare-root.sh"
MARK_GOOD = REPO / "bootkit/data/bootkit-mark-good"
INIT = REPO / "bootkit/data/init"
SCRIPTS = [HOOK, MARK_GOOD, INIT]


def text(path: Path) -> str:
    return path.read_text()


@pytest.mark.parametrize("script", [HOOK, MARK_GOOD], ids=lambda p: p.name)
def test_scripts_read_the_bootkit_argument(script: Path) -> None:
    assert f"{contract.BOOTKIT_ARG}=*)" in text(script)


@pytest.mark.parametrize("script", [HOOK, MARK_GOOD], ids=lambda p: p.name)
def test_scripts_know_where_deployments_live(script: Path) -> None:
    body = text(script)
    assert f"{contract.DEPLOY_ROOT}/" in body
    # Every absolute path under /bootkit that a script names is the contract's.
    for found in re.findall(r"/bootkit/[a-z]+", body):
        assert found in (contract.DEPLOY_ROOT, "/bootkit/grub"), found


def test_hook_leaves_the_physical_root_where_bootkit_looks_for_it() -> None:
    assert f"sysroot=${{BOOTKIT_SYSROOT:-{contract.PHYSICAL_ROOT}}}" in text(HOOK)


def test_hook_checks_the_contract_name_rule() -> None:
    body = text(HOOK)
    # The rule is spelled out as a comment beside the case pattern that implements it;
    # test_prepare_root runs that pattern against contract.is_valid_name.
    assert contract.NAME_PATTERN in body
    assert f'[ "${{#1}}" -le {contract.NAME_MAX} ]' in body


def test_mark_good_script_uses_the_grub_counter_names() -> None:
    body = text(MARK_GOOD)
    assert f"GRUBENV={contract.GRUBENV.lstrip('/')}" in body
    assert contract.GRUB_COUNTED_VAR in body
    assert f"^{contract.GRUB_TRIES_VAR}=" in body


def test_contract_name_rule() -> None:
    assert contract.is_valid_name("f41.x86_64")
    assert not contract.is_valid_name("..")
    assert not contract.is_valid_name("x" * (contract.NAME_MAX + 1))
    assert contract.deployment_path("os", "1-ab") == f"{contract.DEPLOY_ROOT}/os/deploy/1-ab"


def test_bootkit_arg_is_found_anywhere_on_a_command_line() -> None:
    assert contract.bootkit_arg("bootkit=/a quiet") == "/a"
    assert contract.bootkit_arg("quiet bootkit=/b") == "/b"
    assert contract.bootkit_arg("xbootkit=/c") is None


def test_booted_deployment_reads_the_kernel_command_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cmdline = tmp_path / "cmdline"
    cmdline.write_text("root=LABEL=r bootkit=/bootkit/deploy/os/deploy/1 rw\n")
    monkeypatch.setattr(contract, "PROC_CMDLINE", cmdline)
    assert contract.booted_deployment() == "/bootkit/deploy/os/deploy/1"
    monkeypatch.setattr(contract, "PROC_CMDLINE", tmp_path / "missing")
    assert contract.booted_deployment() is None
