"""The bootloader seam: one backend per Bootloader, driven through BootDir by the generic switch."""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path

import pytest
from support.helpers import REPO, deploy_tree, init_sysroot, make_tree

from bootkit.base.files import atomic_write, write_unsynced
from bootkit.boot import backends, switch
from bootkit.boot.backends import Backend, Generation, MenuFiles, StagedMenu, backend_for
from bootkit.boot.bootdir import BootDir
from bootkit.boot.counting import Counter
from bootkit.errors import BootkitError
from bootkit.formats.bls import ENTRIES_DIR
from bootkit.records.config import Bootloader, SysrootConfig
from bootkit.records.deployment import Deployment
from bootkit.secureboot.signing import Signer


def dep(n: int) -> Deployment:
    return Deployment("os", f"{n}-x", str(n), "src", "k", f"k-{n}", f"T{n}", 0.0, n)


class Chalkboard:
    """A made-up bootloader: a menu file per generation, a counter file, a binary.

    It lives only in this test, so a backend that works here needs nothing from any
    module but the seam.
    """

    bootloader = Bootloader.NONE  # stands in for a member a real backend would add
    atomic_switch = True
    installable = True

    def read_menu(self, boot: Path) -> MenuFiles:
        found = sorted((boot / "chalk").glob("gen-*.menu"))
        return MenuFiles({p: p.read_text() for p in found},
                         tuple(sorted((boot / "chalk").glob(".*.bootkit-tmp"))))

    def stage_menu(self, boot: Path, new: Generation, before: MenuFiles) -> StagedMenu:
        (boot / "chalk").mkdir(exist_ok=True)
        final = boot / "chalk" / f"gen-{new.number}.menu"
        text = "".join(f"{d.ref} {new.counter(d).left}\n" for d in new.deployments)
        return StagedMenu(((write_unsynced(final, text.encode()), final),), tuple(before.texts))

    def is_current(self, menu: MenuFiles, generation: int) -> bool:
        return [p.name for p in menu.texts] == [f"gen-{generation}.menu"]

    def holds(self, boot: Path, new: Generation, menu: MenuFiles) -> bool:
        return menu.texts.get(boot / "chalk" / f"gen-{new.number}.menu") == "".join(
            f"{d.ref} {new.counter(d).left}\n" for d in new.deployments
        )

    def count_tries(self, boot: Path, counters: Mapping[str, Counter]) -> dict[str, Counter]:
        out = dict(counters)
        with_counter = boot / "chalk/counter"
        if with_counter.exists():
            path, left = with_counter.read_text().split()
            out[path] = Counter(int(left))
        return out

    def mark_good(self, boot: Path, dep: Deployment) -> list[str]:
        counter = boot / "chalk/counter"
        if counter.exists() and counter.read_text().split()[0] == dep.path:
            counter.unlink()
            return ["wiped the chalk counter"]
        return []

    def write_static(self, boot: Path, config: SysrootConfig) -> None:
        atomic_write(boot / "chalk/board.conf", f"timeout {config.timeout}\n")

    def install(self, esp: Path, signer: Signer | None) -> Path:
        dest = esp / "EFI/chalk/chalk.efi"
        dest.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(dest, b"MZ chalk")
        return dest


def test_every_bootloader_has_its_backend() -> None:
    for bootloader in Bootloader:
        backend = backend_for(bootloader)
        assert backend.bootloader is bootloader
    assert backends.installable() == [Bootloader.SYSTEMD_BOOT, Bootloader.GRUB]
    assert backend_for(Bootloader.GRUB).atomic_switch
    assert not backend_for(Bootloader.SYSTEMD_BOOT).atomic_switch


def test_config_keeps_the_bootloader_name(tmp_path: Path) -> None:
    path = tmp_path / "config.json"
    SysrootConfig(os="os", bootloader=Bootloader.GRUB).save(path)
    assert '"bootloader": "grub"' in path.read_text()
    assert SysrootConfig.load(path).bootloader is Bootloader.GRUB
    with pytest.raises(BootkitError, match=r"unknown bootloader 'lilo'.*systemd-boot, grub, none"):
        SysrootConfig(os="os", bootloader="lilo")  # type: ignore[arg-type]


def test_no_bootloader_name_is_compared_outside_the_backends() -> None:
    compared = re.compile(
        r"""(==|!=|\bin)\s*\(?\s*["'](grub|systemd-boot)["']"""
        r"""|bootloader\S*\s*(==|!=)\s*["']none["']"""
    )
    allowed = {REPO / "bootkit/records/config.py"}
    found = [
        f"{path.relative_to(REPO)}:{n}: {line.strip()}"
        for path in sorted((REPO / "bootkit").rglob("*.py"))
        if "backends" not in path.parts and path not in allowed
        for n, line in enumerate(path.read_text().splitlines(), 1)
        if compared.search(line)
    ]
    assert not found, "\n".join(found)


def test_a_new_backend_is_driven_through_bootdir(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    boot = tmp_path / "boot"
    boot.mkdir()
    chalk: Backend = Chalkboard()
    bootdir = BootDir(boot, SysrootConfig(os="os", bootloader=Bootloader.NONE), chalk)
    a, b = dep(1), dep(2)
    bootdir.switch([a], 1, {a.ref: Counter(3)})
    assert (boot / "chalk/gen-1.menu").read_text() == "os/1-x 3\n"

    # The steps in order: one sync, entries shown default first, then the backend's
    # menu; the old entries go, then the old menu; the static files last.
    events: list[str] = []
    real_rename, real_unlink = os.rename, os.unlink

    def rename(src: Path, dest: Path) -> None:
        events.append(f"show {Path(dest).name}")
        real_rename(src, dest)

    def unlink(path: Path) -> None:
        events.append(f"drop {Path(path).name}")
        real_unlink(path)

    with monkeypatch.context() as m:
        m.setattr(switch, "syncfs", lambda path: events.append("sync"))
        m.setattr(os, "rename", rename)
        m.setattr(os, "unlink", unlink)
        bootdir.switch([b, a], 2, {a.ref: Counter(2), b.ref: Counter(3)})
    assert events == [
        "sync",
        "show bootkit-300000002-00000002-os-2-x+3.conf",
        "show bootkit-200000001-00000002-os-1-x+2.conf",
        "show gen-2.menu",
        "drop bootkit-300000001-00000001-os-1-x+3.conf",
        "drop gen-1.menu",
        "show board.conf",
    ]
    view = bootdir.view()
    assert bootdir.is_current(view, 2) and not bootdir.is_current(view, 1)
    assert bootdir.entry_names(view) == {
        b.path: "bootkit-300000002-00000002-os-2-x+3.conf",
        a.path: "bootkit-200000001-00000002-os-1-x+2.conf",
    }

    # Its own counter is folded in; marking good clears it along with the entry's.
    (boot / "chalk/counter").write_text(f"{b.path} 1\n")
    assert bootdir.counters()[b.path] == Counter(1)
    assert bootdir.mark_good(b) == [
        "renamed bootkit-300000002-00000002-os-2-x+3.conf to bootkit-300000002-00000002-os-2-x.conf",
        "wiped the chalk counter",
    ]
    assert bootdir.counters()[b.path] == Counter()
    assert bootdir.install_bootloader(None) == boot / "EFI/chalk/chalk.efi"


def test_a_registered_backend_serves_the_sysroot(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(backends._registry(), Bootloader.NONE, Chalkboard())
    sr = init_sysroot(tmp_path / "sys", bootloader="none")
    d = deploy_tree(sr, make_tree(tmp_path / "tree"))
    assert (sr.boot_path / "chalk/gen-1.menu").read_text() == f"{d.ref} 3\n"
    assert (sr.boot_path / "chalk/board.conf").is_file()
    assert sr.boot.is_current(sr.boot.view(), sr.state().generation)


def test_none_writes_only_entries_and_installs_nothing(tmp_path: Path) -> None:
    sr = init_sysroot(tmp_path / "sys", bootloader="none")
    deploy_tree(sr, make_tree(tmp_path / "tree"))
    boot = sr.boot_path
    written = sorted(str(p.relative_to(boot)) for p in boot.rglob("*") if p.is_file())
    assert [p for p in written if not p.startswith("bootkit/test/")] == [
        f"{ENTRIES_DIR}/{name}" for name in os.listdir(boot / ENTRIES_DIR)
    ]
    with pytest.raises(BootkitError) as refused:
        sr.boot.install_bootloader(None)
    assert "nothing to install" in refused.value.message
    assert refused.value.hint and "systemd-boot or grub" in refused.value.hint
    assert not (boot / "EFI").exists()


def test_grub_switches_its_menu_in_one_rename(tmp_path: Path) -> None:
    sr = init_sysroot(tmp_path / "sys", bootloader="grub")
    d = deploy_tree(sr, make_tree(tmp_path / "tree"))
    grub = backend_for(Bootloader.GRUB)
    before = grub.read_menu(sr.boot_path)
    new = Generation(sr.config, [d], sr.state().generation + 1, {})
    staged = grub.stage_menu(sr.boot_path, new, before)
    assert len(staged.renames) == 1
    assert set(before.texts) <= set(staged.obsolete)
