"""Boot real disk images: OVMF, systemd-boot or GRUB, a Debian kernel, bootkit's initramfs.

One image per bootloader goes through the life of a machine, one boot per step:
first boot, update, picking the older entry in the menu, rollback, and a boot
entry whose deployment has gone missing. Each step builds on the previous
one, so they run in this order and a step is skipped when an earlier one failed.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from bootkit.diskimage import DiskLayout, edit_image, ext4fs

from bootkit_testing.harness import BootReport, Disk, menu_titles

pytestmark = pytest.mark.qemu

OS = "testos"
VAR = f"/bootkit/deploy/{OS}/var"
TITLES = {v: f"Bootkit Test OS {v}" for v in ("1", "2")}


class Chain:
    """The image of one bootloader and the steps done on it so far."""

    def __init__(self, disk: Disk, trees: dict[str, Path]) -> None:
        self.disk = disk
        self.trees = trees
        self.done: set[str] = set()
        self.paths: dict[str, str] = {}  # testos version -> deployment path

    def require(self, step: str) -> None:
        if step not in self.done:
            pytest.skip(f"needs the '{step}' step, which did not pass")

    def default_path(self) -> str:
        status = self.disk.status()
        assert status[0]["default"], status
        return status[0]["path"]


@pytest.fixture(scope="module", params=["systemd-boot", "grub"])
def chain(request: pytest.FixtureRequest, testos_trees: dict[str, Path],
          tmp_path_factory: pytest.TempPathFactory) -> Iterator[Chain]:
    bootloader = request.param
    workdir = tmp_path_factory.mktemp(f"boot-{bootloader}")
    disk = Disk(workdir / "disk.img", bootloader, workdir)
    disk.create([testos_trees["1"]])
    yield Chain(disk, testos_trees)
    # Kept for the record: how long each boot took.
    print(f"\n{bootloader}: boots took " + ", ".join(f"{s:.1f} s" for s in disk.boots))


def assert_deployment_is_root(report: BootReport, path: str) -> None:
    """What the hook promises: the deployment as /, its usr read-only, shared var, ro sysroot."""
    assert report.bootkit_arg == path
    root = report.mount("/")
    assert root is not None and root.root == path, report.values
    usr = report.mount("/usr")
    assert usr is not None and usr.root == f"{path}/usr" and usr.read_only, report.values
    var = report.mount("/var")
    assert var is not None and var.root == VAR and not var.read_only, report.values
    sysroot = report.mount("/sysroot")
    assert sysroot is not None and sysroot.root == "/" and sysroot.read_only, report.values
    assert report.writable("/usr") is False
    assert report.writable("/etc") is True
    assert report.writable("/var") is True
    assert report.writable("/sysroot") is False
    # The guest could make its filesystem read-only before power-off: no mount left over.
    assert report.values.get("clean-shutdown") == "yes", report.values


def test_first_boot(chain: Chain) -> None:
    path = chain.default_path()
    report = chain.disk.boot()
    assert report.id == "1"
    assert_deployment_is_root(report, path)
    assert report.history("var") == []
    assert report.history("etc") == []
    chain.paths["1"] = path
    chain.done.add("first boot")


def test_update_boots_new_deployment_and_keeps_var(chain: Chain) -> None:
    chain.require("first boot")
    chain.disk.bootkit("deploy", chain.disk.image, chain.trees["2"])
    status = chain.disk.status()
    assert [s["version"] for s in status] == ["2", "1"]
    path = status[0]["path"]
    report = chain.disk.boot()
    assert report.id == "2"
    assert_deployment_is_root(report, path)
    # /var is shared: the first boot's line is there.
    assert report.history("var") == ["1"]
    # /etc was merged at deploy time: the first deployment's local change came along.
    assert report.history("etc") == ["1"]
    assert menu_titles(report.console, list(TITLES.values())) == [TITLES["2"], TITLES["1"]]
    chain.paths["2"] = path
    chain.done.add("update")


def test_second_menu_entry_boots_previous_deployment(chain: Chain) -> None:
    chain.require("update")
    report = chain.disk.boot(menu_downs=1)
    assert report.id == "1"
    assert_deployment_is_root(report, chain.paths["1"])
    assert report.history("var") == ["1", "2"]
    # Each deployment has its own /etc: the second boot wrote to the other one.
    assert report.history("etc") == ["1"]
    # Picking an entry once does not change the default.
    assert chain.default_path() == chain.paths["2"]
    chain.done.add("menu")


def test_rollback_boots_first_deployment_again(chain: Chain) -> None:
    chain.require("menu")
    chain.disk.bootkit("rollback", chain.disk.image)
    assert chain.default_path() == chain.paths["1"]
    report = chain.disk.boot()
    assert report.id == "1"
    assert_deployment_is_root(report, chain.paths["1"])
    assert report.history("var") == ["1", "2", "1"]
    assert report.history("etc") == ["1", "1"]
    assert menu_titles(report.console, list(TITLES.values())) == [TITLES["1"], TITLES["2"]]
    chain.done.add("rollback")


def test_missing_deployment_stops_the_boot(chain: Chain) -> None:
    chain.require("rollback")
    image = chain.disk.image
    missing = chain.paths["1"]
    # The default entry's deployment disappears behind bootkit's back.
    with edit_image(image) as sr:
        shutil.rmtree(sr.path / missing.lstrip("/"))
    run = chain.disk.boot_to_poweroff()
    text = run.text
    assert f"bootkit: deployment {missing} does not exist" in text, text[-3000:]
    assert "bootkit: boot failed, powering off" in text
    # The test OS never ran, so nothing of the deployment was mounted for it.
    assert "BOOTKIT-TEST" not in text
    assert "bootkit: switching root" not in text
    # The image can still be read and repaired from the host: the other deployment is there.
    assert chain.paths["2"] in [s["path"] for s in chain.disk.status()]
    root = DiskLayout.read(image).root
    superblock = ext4fs.read_superblock(image, root.offset)
    # The root filesystem was left consistent: unmounted or read-only at power-off.
    assert not superblock.needs_recovery, (
        "the root filesystem was still mounted read-write when the failed boot powered off "
        f"(its journal needs recovery): {superblock}"
    )
