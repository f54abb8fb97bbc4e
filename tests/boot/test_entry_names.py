"""Entry names that stay while other deployments come and go: a switch writes only
the entries whose name or text changes, in the menu order of both bootloaders."""

from __future__ import annotations

from pathlib import Path

import pytest
from support.helpers import deploy_tree, init_sysroot, make_tree, status_refs, untidy

from bootkit.base import files
from bootkit.boot import switch
from bootkit.formats.bls import DEFAULT, ENTRIES_DIR, OTHER, EntryName
from bootkit.sysroot import cleanup, operations
from bootkit.sysroot.kargs import KargsEdit, change_kargs
from bootkit.sysroot.layout import Sysroot

BOOTLOADERS = ["systemd-boot", "grub"]


def made(tmp_path: Path, bootloader: str, count: int) -> Sysroot:
    sr = init_sysroot(tmp_path / "sys", bootloader)
    tree = make_tree(tmp_path / "tree")
    for _ in range(count):
        deploy_tree(sr, tree)
    return Sysroot(sr.path)


def entry_files(sr: Sysroot) -> set[str]:
    return {p.name for p in (sr.boot_path / ENTRIES_DIR).iterdir() if p.name.endswith(".conf")}


@pytest.fixture
def written(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The entries a switch writes, by final name."""
    out: list[str] = []
    real = files.write_unsynced

    def counting(path: Path, data: bytes, mode: int = 0o644) -> Path:
        if path.parent.name == "entries":
            out.append(path.name)
        return real(path, data, mode)

    monkeypatch.setattr(switch, "write_unsynced", counting)
    return out


@pytest.mark.parametrize("bootloader", BOOTLOADERS)
def test_a_deploy_writes_the_new_entry_and_the_old_defaults_only(
    tmp_path: Path, bootloader: str, written: list[str]
) -> None:
    sr = made(tmp_path, bootloader, 5)
    before = entry_files(sr)
    old_default = sr.state().default
    written.clear()
    dep = deploy_tree(sr, make_tree(tmp_path / "other", version="9"))
    assert len(written) == 2, written
    classes = sorted((EntryName.parse(n).cls, n) for n in written)  # type: ignore[union-attr]
    assert [c for c, _ in classes] == [OTHER, DEFAULT]
    assert dep.id in classes[1][1] and old_default.split("/")[1] in classes[0][1]
    after = entry_files(sr)
    assert len(before & after) == 4 and after - before == set(written)
    assert status_refs(sr)[:2] == [dep.ref, old_default]
    assert not untidy(Sysroot(sr.path))


@pytest.mark.parametrize("bootloader", BOOTLOADERS)
def test_rollback_and_undeploy_write_little(
    tmp_path: Path, bootloader: str, written: list[str]
) -> None:
    sr = made(tmp_path, bootloader, 5)
    written.clear()
    operations.rollback(sr)
    assert len(written) == 2, written  # the new default, the old one demoted
    written.clear()
    cleanup.undeploy(Sysroot(sr.path), status_refs(sr)[-1])
    assert written == []  # the others keep their names
    assert not untidy(Sysroot(sr.path))


@pytest.mark.parametrize("bootloader", BOOTLOADERS)
def test_a_changed_karg_gives_a_new_file_name(
    tmp_path: Path, bootloader: str, written: list[str]
) -> None:
    sr = made(tmp_path, bootloader, 3)
    before = entry_files(sr)
    written.clear()
    change_kargs(sr, None, KargsEdit(append=("quiet",)))
    assert len(written) == 1
    (name,) = written
    after = entry_files(Sysroot(sr.path))
    assert name not in before and name in after and len(after) == 3
    assert len(before - after) == 1
    gone = EntryName.parse((before - after).pop())
    made_now = EntryName.parse(name)
    assert gone and made_now and gone.generation < made_now.generation
    assert (gone.cls, gone.serial, gone.tail) == (made_now.cls, made_now.serial, made_now.tail)
    assert not untidy(Sysroot(sr.path))


@pytest.mark.parametrize("bootloader", BOOTLOADERS)
def test_old_format_entries_are_replaced(tmp_path: Path, bootloader: str) -> None:
    sr = made(tmp_path, bootloader, 3)
    order = status_refs(sr)
    edir = sr.boot_path / ENTRIES_DIR
    generation = sr.state().generation
    for rank, ref in enumerate(order):
        (path,) = [p for p in edir.iterdir() if ref.split("/")[1] in p.name]
        name = EntryName.parse(path.name)
        assert name is not None
        legacy = EntryName(generation, 0, name.tail, name.cls, name.tries_left,
                           name.tries_done, legacy_rank=rank)
        text = path.read_text().replace(f"sort-key {name.sort_key}", f"sort-key {legacy.sort_key}")
        path.with_name(legacy.filename).write_text(text)
        path.unlink()
    sr = Sysroot(sr.path)
    assert status_refs(sr) == order  # read in either format
    assert untidy(sr)
    operations.bootloader_update(sr)
    sr = Sysroot(sr.path)
    assert status_refs(sr) == order
    assert all(not EntryName.parse(n).legacy for n in entry_files(sr))  # type: ignore[union-attr]
    assert not untidy(sr)


@pytest.mark.parametrize("uki", [False, True])
def test_a_held_entry_text_is_the_rendered_one_under_its_name(tmp_path: Path, uki: bool) -> None:
    # A switch renders each entry once and derives the text it would have under an
    # older name; that text must be exactly what rendering under that name gives.
    from bootkit.boot.entries import entry_name, render_entry

    sr = made(tmp_path, "systemd-boot", 1)
    dep = sr.load(sr.state().default).with_changes(uki=uki, title="sort-key 1 x")
    fresh = entry_name(dep, 7, DEFAULT)
    text = render_entry(sr.config, dep, fresh).render()
    for name in (entry_name(dep, 3, DEFAULT), entry_name(dep, 7, OTHER),
                 EntryName(5, dep.serial, fresh.tail, DEFAULT, 2, 1)):
        assert switch._with_sort_key(text, fresh, name) == (
            render_entry(sr.config, dep, name).render()
        )
