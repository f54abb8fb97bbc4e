"""Automatic fallback under real firmware and bootloaders: boot counting and marking good.

One image per bootloader goes through four boots. Deployment "good" marks each
of its boots good (bootkit-mark-good, the busybox script); deployment "bad" comes up
but never does, like a system whose health check fails. "bad" is deployed last,
as the default, with 2 tries:

1. and 2. "bad" boots and its tries count down: systemd-boot renames its entry
   `+2` -> `+1-1` -> `+0-2` (the test OS prints the entry it counted); GRUB counts
   down bootkit's grubenv 2 -> 1 -> 0 and says so on the console.
3. With no tries left, the bootloader boots "good" by itself, which marks its
   first boot good; `bootkit status` reports the default "bad" as bad.
4. The next bootkit transaction makes "good" the default and says so; "good"
   boots again, stays default and good.

Each step builds on the previous one, so they run in this order and a step is
skipped when an earlier one failed.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from support.helpers import deploy_tree

from bootkit.diskimage import edit_image
from bootkit.sysroot import operations
from bootkit.sysroot.status import status as read_status

from bootkit_testing.harness import TEST_KARGS, BootReport, Disk
from bootkit_testing.kernel import KernelTree
from bootkit_testing.qemu import strip_terminal_codes
from bootkit_testing.testos import build_testos

pytestmark = pytest.mark.qemu

TRIES = 2


class Chain:
    def __init__(self, disk: Disk, bootloader: str) -> None:
        self.disk = disk
        self.bootloader = bootloader
        self.done: set[str] = set()
        self.tails: dict[str, str] = {}  # version -> "<os>-<id>", as entry names hold it

    def require(self, step: str) -> None:
        if step not in self.done:
            pytest.skip(f"needs the '{step}' step, which did not pass")

    def status(self) -> dict[str, dict]:
        """`bootkit image status --json`, by version, in menu order."""
        return {s["version"]: s for s in self.disk.status()}

    def counted(self, report: BootReport) -> str:
        """What the bootloader counted this boot, as its console or the guest shows it."""
        if self.bootloader == "systemd-boot":
            return report.values.get("boot-counted", "")
        found = re.findall(
            r"bootkit: boot tries left for (\S+): (\d+)", strip_terminal_codes(report.console)
        )
        return " ".join(f"{entry}={left}" for entry, left in found)


@pytest.fixture(scope="module")
def assess_trees(boot_kernel: KernelTree, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("testos-assess")
    return {v: build_testos(base / v, boot_kernel, v, assess=v) for v in ("good", "bad")}


@pytest.fixture(scope="module", params=["systemd-boot", "grub"])
def chain(request: pytest.FixtureRequest, assess_trees: dict[str, Path],
          tmp_path_factory: pytest.TempPathFactory) -> Iterator[Chain]:
    bootloader = request.param
    workdir = tmp_path_factory.mktemp(f"bootcount-{bootloader}")
    disk = Disk(workdir / "disk.img", bootloader, workdir)
    disk.create([assess_trees["good"]])
    with edit_image(disk.image) as sr:
        deploy_tree(sr, assess_trees["bad"], kargs=TEST_KARGS, tries=TRIES)
        status = read_status(sr).rows
    chain = Chain(disk, bootloader)
    chain.tails = {s.deployment.version: f"{s.deployment.os}-{s.deployment.id}" for s in status}
    assert [s.deployment.version for s in status] == ["bad", "good"]
    assert status[0].default and status[0].counter.left == TRIES
    assert status[0].entry and status[0].entry.endswith(f"+{TRIES}.conf")
    yield chain
    print(f"\n{bootloader}: boots took " + ", ".join(f"{s:.1f} s" for s in disk.boots))


def test_tries_count_down(chain: Chain) -> None:
    bad = chain.tails["bad"]
    expected = {
        "systemd-boot": [re.compile(rf"{bad}\+1-1\.conf"), re.compile(rf"{bad}\+0-2\.conf")],
        "grub": [re.compile(rf"{bad}=1\Z"), re.compile(rf"{bad}=0\Z")],
    }[chain.bootloader]
    for pattern in expected:
        report = chain.disk.boot()
        assert report.id == "bad"
        assert report.values.get("mark-good") == "skipped"
        assert pattern.search(chain.counted(report)), chain.counted(report)
    status = chain.status()["bad"]
    assert status["default"] and status["boot"] == "bad" and status["tries_left"] == 0, status
    chain.done.add("count down")


def test_previous_deployment_boots_by_itself(chain: Chain) -> None:
    chain.require("count down")
    report = chain.disk.boot()
    assert report.id == "good"
    assert report.values.get("mark-good") == "ok", report.values
    if chain.bootloader == "grub":
        # GRUB's own words, before its menu.
        text = strip_terminal_codes(report.console)
        assert f"bootkit: no boot tries left for bootkit-{chain.tails['bad']}" in text
        assert f"bootkit: booting bootkit-{chain.tails['good']} instead" in text
    else:
        # Its own first boot was counted too (+3 -> +2-1), then marked good.
        assert "+2-1.conf" in chain.counted(report)
    assert "bootkit-mark-good: marked" in report.console
    status = chain.status()
    # Nothing was changed on the host: the default is still "bad", reported as bad.
    assert status["bad"]["default"] and status["bad"]["boot"] == "bad"
    assert status["good"]["boot"] == "good" and status["good"]["tries_left"] is None
    chain.done.add("fallback")


def test_next_transaction_makes_the_good_deployment_default(
    chain: Chain, caplog: pytest.LogCaptureFixture
) -> None:
    chain.require("fallback")
    with caplog.at_level(logging.INFO, logger="bootkit"), edit_image(chain.disk.image) as sr:
        operations.bootloader_update(sr)
        status = {s.deployment.version: s for s in read_status(sr).rows}
    notes = [r.getMessage() for r in caplog.records if r.name == "bootkit"]
    assert len(notes) == 1 and "failed to boot" in notes[0], notes
    assert list(status) == ["good", "bad"]
    assert status["good"].default and status["good"].counter.state == "good"
    # The counter carried over into the new generation (for GRUB, from grubenv).
    bad = status["bad"]
    assert bad.counter.bad and bad.entry and bad.entry.endswith("+0-2.conf"), bad
    report = chain.disk.boot()
    assert report.id == "good"
    assert report.values.get("mark-good") == "ok"
    assert chain.counted(report) == ""  # a good entry is not counted any more
    assert "bootkit-mark-good: this boot is already marked good" in report.console
    status = chain.status()
    assert status["good"]["default"] and status["good"]["boot"] == "good"
