"""A UKI deployment's kernel arguments: the image's are built into the UKI at deploy."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from support.helpers import bls_entries, cli, make_tree, ok, snapshot
from test_uki import fake_bzimage

from bootkit.secureboot import uki
from bootkit.sysroot.imageargs import KARGS_DIR

pytestmark = pytest.mark.skipif(not uki.DEFAULT_STUB.is_file(),
                                reason="systemd's EFI stub (systemd-boot-efi) is not installed")


def test_the_uki_carries_the_image_arguments_and_bootkit_kargs_refuses_changes(
    tmp_path: Path,
) -> None:
    sysroot = tmp_path / "sys"
    sysroot.mkdir()
    ok("init", "--sysroot", sysroot, "--os", "test", "--bootloader", "systemd-boot", "--uki")
    tree = make_tree(tmp_path / "tree", kernel=fake_bzimage("6.1.0-1-amd64 (b@h) #1"),
                     files={f"{KARGS_DIR}/10-a.conf": "quiet\n"})
    dep = json.loads(ok("deploy", "--sysroot", sysroot, tree, "--karg", "console=ttyS0",
                        "--json").stdout)
    ((_, entry),) = bls_entries(sysroot / "efi")
    info = uki.inspect_uki(sysroot / "efi" / entry.efi.lstrip("/"))
    assert info.cmdline == f"root=LABEL=bootkit-root rw bootkit={dep['path']} quiet console=ttyS0"
    assert info.cmdline == entry.options
    shown = json.loads(ok("kargs", "--sysroot", sysroot, "--json").stdout)
    assert (shown["uki"], shown["image_kargs"], shown["kargs"]) == (True, ["quiet"], ["console=ttyS0"])
    before = snapshot(sysroot)
    result = cli("kargs", "--sysroot", sysroot, "--append", "x")
    assert result.exit_code == 1
    assert "boots a Unified Kernel Image" in result.stderr
    assert "hint: deploy the tree again with 'bootkit deploy --karg ARG'" in result.stderr
    assert snapshot(sysroot) == before
