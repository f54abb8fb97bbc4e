"""Values from a tree or a user that no boot file could carry are refused, and nothing changes.

Each test drives bootkit the way a user (or a hostile image) would, and checks that
the value never reached a boot file: the command fails with one `bootkit:` line
naming the value and where it came from, and the sysroot is byte for byte as before.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from support.bootreaders import grub_cmdline, grub_command, kernel_params
from support.helpers import (
    bls_entries,
    cli,
    fails,
    grub_slot_text,
    init_sysroot,
    make_tree,
    ok,
    snapshot,
    untidy,
)

from bootkit.boot.backends import grub, systemd_boot
from bootkit.formats import grubenv, grubscript
from bootkit.formats.bls import ENTRIES_DIR
from bootkit.formats.bootvalues import MAX_TIMEOUT, MAX_TRIES
from bootkit.sysroot.layout import Sysroot

needs_grub_check = pytest.mark.skipif(
    shutil.which("grub-script-check") is None, reason="needs grub-script-check (grub-common)"
)


@pytest.fixture(params=["systemd-boot", "grub"])
def sysroot(tmp_path: Path, request: pytest.FixtureRequest) -> Path:
    """A sysroot with one good deployment, whose boot files a refused deploy must keep."""
    path = tmp_path / "sys"
    init_sysroot(path, request.param)
    ok("deploy", "--sysroot", path, make_tree(tmp_path / "good"))
    return path


def _refused(sysroot: Path, *args: str | Path) -> str:
    before = snapshot(sysroot)
    line = fails(*args)
    assert snapshot(sysroot) == before
    return line


def _boot_texts(sysroot: Path) -> str:
    boot = sysroot / "efi"
    return "".join(p.read_text() for p in boot.rglob("*") if p.is_file() and p.suffix in
                   (".conf", ".cfg"))


# --- what a tree brings --------------------------------------------------------------


@pytest.mark.parametrize(
    "kver", ["6.1;reboot; }", "6.1\nx", "6.1 $prefix", "6.1'x", "6.1\udcff", "x6.1"]
)
@pytest.mark.parametrize("layout", ["usr/lib/modules", "boot"])
def test_a_kernel_version_no_boot_file_can_carry_is_refused(
    sysroot: Path, tmp_path: Path, kver: str, layout: str
) -> None:
    tree = make_tree(tmp_path / "hostile", kver=kver)
    if layout == "boot":
        (tree / "boot").mkdir()
        os.rename(tree / "usr/lib/modules" / kver / "vmlinuz", tree / "boot" / f"vmlinuz-{kver}")
        shutil.rmtree(tree / "usr/lib/modules")
    line = _refused(sysroot, "deploy", "--sysroot", sysroot, tree)
    assert "invalid kernel version" in line and "a kernel release starts with a digit" in line
    assert "reboot" not in _boot_texts(sysroot)


@pytest.mark.parametrize(
    ("key", "value", "reason"),
    [
        ("PRETTY_NAME", "Evil\x1b[2J OS", "U+001B"),
        ("PRETTY_NAME", "Evil\tOS", "U+0009"),
        ("PRETTY_NAME", "safe\u202eSO", "U+202E"),
        ("PRETTY_NAME", " Evil", "blank"),
        ("PRETTY_NAME", "E" * 300, "longer than 255"),
        ("VERSION_ID", "1\x00", "U+0000"),
        ("VERSION_ID", "1" * 100, "longer than 64"),
    ],
)
def test_os_release_values_no_boot_file_can_carry_are_refused(
    sysroot: Path, tmp_path: Path, key: str, value: str, reason: str
) -> None:
    tree = make_tree(tmp_path / "hostile")
    (tree / "usr/lib/os-release").write_text(f'NAME="Evil"\n{key}="{value}"\n')
    line = _refused(sysroot, "deploy", "--sysroot", sysroot, tree)
    assert f"{key} in the tree's os-release" in line and reason in line, line


def test_a_version_from_the_kernel_or_a_title_from_the_os_name_is_used_when_unset(
    sysroot: Path, tmp_path: Path
) -> None:
    tree = make_tree(tmp_path / "bare", kver="6.6.0+")
    (tree / "usr/lib/os-release").write_text("ID=bare\n")
    ok("deploy", "--sysroot", sysroot, tree)
    (_, entry), *_ = [(f, e) for f, e in bls_entries(sysroot / "efi") if "6.6.0+" in e.linux]
    assert (entry.title, entry.version) == ("test", "6.6.0+")


# --- what a user gives ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--version", "1\ntitle injected"], "invalid version"),
        (["--version", " 1"], "begins or ends with a blank"),
        (["--karg", "a;reboot"], "';': GRUB script reads it as an operator"),
        (["--karg", "$prefix"], "'$': GRUB expands variables"),
        (["--karg", "x=${root}"], "'$'"),
        (["--karg", "a}"], "'}'"),
        (["--karg", "it's"], "escaped"),
        (["--karg", 'a="b'], "double quote"),
        (["--karg", "#x"], "comment"),
        (["--karg", "a\nb"], "blank"),
        (["--karg", '"bootkit=/x"'], "bootkit sets it itself"),
        (["--karg", '"root=/dev/sda"'], "bootkit sets it itself"),
    ],
)
def test_deploy_refuses_values_no_boot_file_can_carry(
    sysroot: Path, tmp_path: Path, args: list[str], message: str
) -> None:
    tree = make_tree(tmp_path / "tree")
    line = _refused(sysroot, "deploy", "--sysroot", sysroot, tree, *args)
    assert message in line, line


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--root-arg", "root=LABEL=r\noptions injected"], "invalid root argument"),
        (["--root-arg", "root=LABEL=r rootflags=x"], "blank"),
        (["--root-arg", "root=$prefix"], "'$'"),
        (["--boot-dir", "/../outside"], "inside the sysroot"),
        (["--boot-dir", "/efi/../../outside"], "inside the sysroot"),
        (["--boot-dir", "efi"], "absolute"),
        # $BOOT/bootkit would be the sysroot's own /bootkit, whose trees cleanup removes.
        (["--boot-dir", "/"], "share bootkit's records"),
        (["--boot-dir", "//."], "share bootkit's records"),
        (["--boot-dir", "/bootkit/boot"], "share bootkit's records"),
        # $BOOT/bootkit/grub is GRUB's menu: no OS may keep its kernels there.
        (["--os", "grub"], "taken by bootkit's own files"),
    ],
)
def test_init_refuses_values_no_boot_file_can_carry(
    tmp_path: Path, args: list[str], message: str
) -> None:
    sysroot = tmp_path / "deep" / "sys"
    sysroot.mkdir(parents=True)
    line = fails("init", "--sysroot", sysroot, "--os", "x", "--bootloader", "grub", *args)
    assert message in line, line
    assert [p.name for p in tmp_path.rglob("*")] == ["deep", "sys"]


@pytest.mark.parametrize(
    "args",
    [
        ["--tries", "200000"], ["--tries", str(MAX_TRIES + 1)], ["--tries", "-1"],
        ["--timeout", "-1"], ["--timeout", str(MAX_TIMEOUT + 1)],
    ],
)
def test_init_bounds_tries_and_timeout(tmp_path: Path, args: list[str]) -> None:
    result = cli("init", "--sysroot", tmp_path, "--os", "x", "--bootloader", "grub", *args)
    assert result.exit_code == 2, result.output
    assert f"Invalid value for '{args[0]}'" in result.stderr
    assert list(tmp_path.iterdir()) == []


def test_deploy_bounds_tries(sysroot: Path, tmp_path: Path) -> None:
    before = snapshot(sysroot)
    tree = make_tree(tmp_path / "tree")
    result = cli("deploy", "--sysroot", sysroot, tree, "--tries", str(MAX_TRIES + 1))
    assert result.exit_code == 2 and "Invalid value for '--tries'" in result.stderr
    assert snapshot(sysroot) == before


@needs_grub_check
def test_the_most_tries_make_a_small_grub_menu_grub_reads(tmp_path: Path) -> None:
    sysroot = tmp_path / "sys"
    sysroot.mkdir()
    ok("init", "--sysroot", sysroot, "--os", "x", "--bootloader", "grub",
       "--tries", str(MAX_TRIES), "--timeout", str(MAX_TIMEOUT))
    ok("deploy", "--sysroot", sysroot, make_tree(tmp_path / "tree"))
    _check_grub_menu(sysroot, tmp_path, deployments=1)


@needs_grub_check
def test_a_counter_on_boot_cannot_blow_up_the_grub_menu(tmp_path: Path) -> None:
    # $BOOT is a FAT partition anyone with the disk can edit: its entry names and
    # grubenv may claim any number of tries left.
    sysroot = tmp_path / "sys"
    init_sysroot(sysroot, "grub")
    ok("deploy", "--sysroot", sysroot, make_tree(tmp_path / "tree"))
    boot = sysroot / "efi"
    (entry,) = (boot / ENTRIES_DIR).iterdir()
    entry.rename(entry.with_name(re.sub(r"\+\d+", "+500000", entry.name)))
    env = grubenv.read(grub.env_path(boot))
    grubenv.write(grub.env_path(boot), {**env, grubscript.TRIES_VAR: "500000"})
    ok("bootloader", "update", "--sysroot", sysroot)
    _check_grub_menu(sysroot, tmp_path, deployments=1)
    assert grubenv.read(grub.env_path(boot))[grubscript.TRIES_VAR] == str(MAX_TRIES)
    assert not untidy(Sysroot(sysroot))


def _check_grub_menu(sysroot: Path, tmp_path: Path, deployments: int) -> None:
    text = grub_slot_text(sysroot / "efi")
    assert text is not None and len(text) < 40_000
    assert sum(line.startswith("menuentry ") for line in text.splitlines()) == deployments
    (tmp_path / "slot.cfg").write_text(text)
    proc = subprocess.run(["grub-script-check", str(tmp_path / "slot.cfg")],
                          capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr


# --- kernel arguments: what passes means the same to every reader, and a way back -----


def test_kernel_arguments_reach_every_reader_alike_and_can_be_emptied(
    sysroot: Path, tmp_path: Path
) -> None:
    kargs = ["console=ttyS0,115200n8", 'dyndbg="module=xhci_hcd"', "memmap=64M#0x1", "acpi_osi=!"]
    ok("deploy", "--sysroot", sysroot, make_tree(tmp_path / "t1"),
       *(f"--karg={k}" for k in kargs))
    # Without --karg they carry over; --karg-none empties them; --karg sets them again.
    ok("deploy", "--sysroot", sysroot, make_tree(tmp_path / "t2", version="2"))
    assert _kargs_by_version(sysroot)["2"] == kargs
    _check_every_reader(sysroot)
    ok("deploy", "--sysroot", sysroot, make_tree(tmp_path / "t3", version="3"), "--karg-none")
    assert _kargs_by_version(sysroot)["3"] == []
    ok("deploy", "--sysroot", sysroot, make_tree(tmp_path / "t4", version="4"))
    assert _kargs_by_version(sysroot)["4"] == []
    _check_every_reader(sysroot)
    assert not untidy(Sysroot(sysroot))


def test_karg_none_and_karg_exclude_each_other(sysroot: Path, tmp_path: Path) -> None:
    before = snapshot(sysroot)
    result = cli("deploy", "--sysroot", sysroot, make_tree(tmp_path / "t"), "--karg-none",
                 "--karg", "quiet")
    assert result.exit_code == 2 and "exclude each other" in result.stderr
    assert snapshot(sysroot) == before


def _kargs_by_version(sysroot: Path) -> dict[str, list[str]]:
    rows = json.loads(ok("status", "--sysroot", sysroot, "--json").stdout)["deployments"]
    return {row["version"]: row["kargs"] for row in rows}


def _check_every_reader(sysroot: Path) -> None:
    """Each entry's options mean the same to the kernel whether systemd-boot passes them
    verbatim, GRUB's blscfg pastes them into a menu entry, or bootkit's slot file quotes
    them."""
    boot = sysroot / "efi"
    slot = grub_slot_text(boot)
    slot_lines = {}
    if slot is not None:
        for line in slot.splitlines():
            if line.strip().startswith("linux "):
                words = grub_command(line)
                slot_lines[kernel_params(grub_cmdline(words[2:]))[2][1]] = words
    for _, entry in bls_entries(boot):
        verbatim = kernel_params(entry.options)
        pasted = grub_command(f"linux (hd0,gpt1){entry.linux} {entry.options}")
        assert kernel_params(grub_cmdline(pasted[2:])) == verbatim
        if slot is not None:
            path = verbatim[2][1]  # root=, rw, bootkit=<path>
            assert kernel_params(grub_cmdline(slot_lines[path][2:])) == verbatim


# --- records that were edited by hand --------------------------------------------------


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("timeout", "3\nreboot", "'timeout' must be a whole number"),
        ("timeout", -1, "boot menu timeout"),
        ("tries", "x", "'tries' must be a whole number"),
        ("tries", 200000, "number of boot tries"),
        ("root_arg", "root=LABEL=r\nreboot", "root argument"),
        ("root_arg", 5, "'root_arg' must be text"),
        ("boot_dir", "/../../outside", "inside the sysroot"),
        # /etc/grub.d/15_bootkit echoes it into grub.cfg: a line break would add commands.
        ("boot_dir", "/efi\nreboot", "boot directory"),
        ("uki", "yes", "true or false"),
        ("os", ["x"], "'os' must be text"),
    ],
)
@pytest.mark.parametrize("command", [["status"], ["bootloader", "update"]])
def test_a_config_value_of_the_wrong_kind_is_refused(
    sysroot: Path, field: str, value: object, message: str, command: list[str]
) -> None:
    config = sysroot / "bootkit/config.json"
    config.write_text(json.dumps({**json.loads(config.read_text()), field: value}))
    line = _refused(sysroot, *command, "--sysroot", sysroot)
    assert "config.json" in line and message in line, line
    assert not (sysroot.parent / "outside").exists()


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("title", "T\noptions init=/bin/sh", "invalid title"),
        ("version", "1\x00", "invalid version"),
        ("kernel_version", "6.1;reboot", "invalid kernel version"),
        ("payload", "../../../etc", "invalid payload name"),
        ("kargs", ["a;reboot"], "invalid kernel argument"),
        ("kargs", "quiet", "'kargs' must be a list"),
        ("uki", "no", "true or false"),
        ("serial", "1", "whole number"),
        ("os", 5, "must be text"),
    ],
)
def test_deployment_metadata_edited_into_hostile_values_is_refused(
    sysroot: Path, field: str, value: object, message: str
) -> None:
    (meta,) = (sysroot / "bootkit/deploy/test/deploy").glob("*.json")
    meta.write_text(json.dumps({**json.loads(meta.read_text()), field: value}))
    line = _refused(sysroot, "bootloader", "update", "--sysroot", sysroot)
    assert str(meta) in line and message in line, line


# --- image deploy takes the same options ----------------------------------------------


_IMAGE_TOOLS = ("mformat", "mcopy", "mke2fs", "debugfs", "sfdisk")


@pytest.mark.skipif(
    not systemd_boot.SYSTEMD_BOOT_EFI.is_file()
    or any(shutil.which(t) is None and not Path("/usr/sbin", t).exists() for t in _IMAGE_TOOLS),
    reason="needs systemd-boot-efi, mtools and e2fsprogs",
)
def test_image_deploy_can_empty_the_kernel_arguments(tmp_path: Path) -> None:
    image = tmp_path / "disk.img"
    ok("image", "create", image, make_tree(tmp_path / "t1"), "--size", "110M", "--esp-size",
       "40M", "--bootloader", "systemd-boot", "--os", "test", "--karg", "console=ttyS0")
    ok("image", "deploy", image, make_tree(tmp_path / "t2", version="2"), "--karg-none")
    line = fails("image", "deploy", image, make_tree(tmp_path / "t3", version="3"),
                 "--karg", "a;reboot")
    assert "';'" in line
    rows = json.loads(ok("image", "status", image, "--json").stdout)["deployments"]
    assert {row["version"]: row["kargs"] for row in rows} == {"1": ["console=ttyS0"], "2": []}
