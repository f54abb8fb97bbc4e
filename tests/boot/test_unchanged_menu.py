"""A transaction rewrites $BOOT only when the menu changes: an update that would write
the very same files leaves them alone, and a change still makes a complete new
generation. $BOOT is read and parsed once per transaction."""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path

import pytest
from support.helpers import deploy_tree, init_sysroot, make_tree, untidy

from bootkit.boot import switch
from bootkit.formats import bls
from bootkit.sysroot import operations
from bootkit.sysroot.kargs import KargsEdit, change_kargs
from bootkit.sysroot.layout import Sysroot

BOOTLOADERS = ["systemd-boot", "grub"]


def made(tmp_path: Path, bootloader: str, count: int = 3) -> Sysroot:
    sr = init_sysroot(tmp_path / "sys", bootloader)
    tree = make_tree(tmp_path / "tree")
    for _ in range(count):
        deploy_tree(sr, tree)
    return Sysroot(sr.path)


def files(boot: Path) -> dict[str, tuple[int, int, bytes]]:
    """Every file on $BOOT outside the payloads: (inode, mtime, content) by path."""
    out = {}
    for root, _dirs, names in os.walk(boot):
        for name in names:
            path = Path(root, name)
            if "bootkit" in path.relative_to(boot).parts[:1] and "grub" not in path.parts:
                continue  # the payloads
            st = path.stat()
            out[str(path.relative_to(boot))] = (st.st_ino, st.st_mtime_ns, path.read_bytes())
    return out


@pytest.mark.parametrize("bootloader", BOOTLOADERS)
def test_an_unchanged_menu_is_not_rewritten(tmp_path: Path, bootloader: str) -> None:
    sr = made(tmp_path, bootloader)
    before, generation = files(sr.boot_path), sr.state().generation
    assert any(name.startswith("loader/entries/") for name in before)
    operations.bootloader_update(Sysroot(sr.path))
    assert files(sr.boot_path) == before
    assert Sysroot(sr.path).state().generation == generation
    assert untidy(Sysroot(sr.path)) == []


@pytest.mark.parametrize("bootloader", BOOTLOADERS)
def test_a_changed_entry_makes_a_new_generation(tmp_path: Path, bootloader: str) -> None:
    sr = made(tmp_path, bootloader)
    before, generation = files(sr.boot_path), sr.state().generation
    old_entries = {n for n in before if n.startswith("loader/entries/")}
    change_kargs(sr, None, KargsEdit(append=("quiet",)))
    sr = Sysroot(sr.path)
    after = files(sr.boot_path)
    new_entries = {n for n in after if n.startswith("loader/entries/")}
    assert sr.state().generation > generation
    # Only the default's text changed: its entry alone has a new name, the others
    # are the very files they were.
    default = sr.boot.entry_names()[sr.load(sr.state().default).path]
    assert new_entries - old_entries == {f"loader/entries/{default}"}
    assert len(old_entries - new_entries) == 1
    for name in new_entries & old_entries:
        assert after[name] == before[name]
    assert (sr.boot_path / "loader/entries" / default).read_text().endswith(" quiet\n")
    assert untidy(sr) == []


@pytest.mark.parametrize("bootloader", BOOTLOADERS)
def test_a_changed_timeout_reaches_the_bootloader(tmp_path: Path, bootloader: str) -> None:
    sr = made(tmp_path, bootloader, count=2)
    replace(sr.config, timeout=sr.config.timeout + 7).save(sr.config_path)
    operations.bootloader_update(Sysroot(sr.path))
    sr = Sysroot(sr.path)
    wanted = f"timeout {sr.config.timeout}"
    if bootloader == "grub":
        (text,) = sr.boot.view().menu.texts.values()
        assert f"set timeout={sr.config.timeout}" in text
    else:
        assert (sr.boot_path / "loader/loader.conf").read_text().startswith(wanted + "\n")
    assert untidy(sr) == []


@pytest.mark.parametrize("bootloader", BOOTLOADERS)
def test_a_transaction_parses_each_entry_once(
    tmp_path: Path, bootloader: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    sr = made(tmp_path, bootloader)
    parsed: list[str] = []
    real = bls.parse_entry

    def counting(text: str, source: str = "entry") -> bls.BootEntry:
        parsed.append(Path(source).name)
        return real(text, source)

    monkeypatch.setattr(switch, "parse_entry", counting)
    operations.bootloader_update(Sysroot(sr.path))
    assert len(parsed) == 3 and len(set(parsed)) == 3, parsed
