"""Debian 12 updated from OCI images with no network: an oci-archive on a second disk.

An air-gapped machine gets its updates on a disk: the same path, a newer image each
time. Three boots of one systemd-boot image (what the guest does is in
bootkit_testing/debian/guest_report.py, the images in bootkit_testing/debian/image.py):

1. `oci-switch`: deployment A (from the directory tree, as in test_debian) comes up
   with the disk holding image version 1; inside, /etc is edited and user data
   written, then `bootkit switch oci-archive:... --unverified` stages the image; a
   clean shutdown finalizes it;
2. `oci-upgrade`: the image deployment comes up with all of that, and `bootkit
   status` shows where it came from; the disk now holds version 2 (one package
   changed): `bootkit upgrade --check` finds it and `bootkit upgrade` stages it;
3. `oci-rollback`: version 2 comes up with the changed package and the data;
   `upgrade --check` finds nothing newer; `bootkit rollback` makes version 1 the
   default again.

Each boot's time and the time of the import inside it are printed at the end.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from bootkit_testing import debian, harness
from bootkit_testing.debian import TREE_A, Variant
from bootkit_testing.debian.containers import ensure_containers_base
from bootkit_testing.debian.guest_report import (
    CHANGED_FILE,
    IMAGE_MARKER,
    OCI_ARCHIVE,
    UPDATE_LABEL,
    UPDATE_MOUNT,
)
from bootkit_testing.debian.image import DebianImages, make_images, update_disk
from bootkit_testing.harness import BootReport, Disk, Run
from bootkit_testing.kernel import KernelTree
from bootkit_testing.qemu import Machine

from .test_debian import (
    Boot,
    _GuestVM,
    assert_came_up_in,
    assert_mounts,
    assert_status,
    assert_step_left_boot_read_only,
    assert_user_data,
    boot,
    deployments,
    guest_args,
    status_of,
)

pytestmark = pytest.mark.qemu

OS = "debian"
BOOTLOADER = "systemd-boot"
STEPS = ("oci-switch", "oci-upgrade", "oci-rollback")
# Which image the update disk holds in each boot.
DISK_OF_STEP = {"oci-switch": "1", "oci-upgrade": "2", "oci-rollback": "2"}
REFERENCE = f"oci-archive:{UPDATE_MOUNT}/{OCI_ARCHIVE}"


@dataclass(frozen=True)
class OciSetup:
    tree_a: Path
    images: DebianImages
    disks: dict[str, Path]  # image tag -> update disk holding it as OCI_ARCHIVE
    build_seconds: float


@pytest.fixture(scope="module")
def oci_setup(boot_kernel: KernelTree, tmp_path_factory: pytest.TempPathFactory) -> OciSetup:
    started = time.monotonic()
    try:
        base = debian.ensure_base(boot_kernel)
    except debian.DebianUnavailable as err:
        pytest.skip(str(err))
    work = tmp_path_factory.mktemp("oci")
    tree_a = debian.make_tree(work / "tree-a", ensure_containers_base(base), TREE_A)
    images = make_images(work / "images", tree_a)
    disks = {
        tag: update_disk(work / f"update-{tag}.img", archive, OCI_ARCHIVE, UPDATE_LABEL, work)
        for tag, archive in images.archives.items()
    }
    return OciSetup(tree_a, images, disks, time.monotonic() - started)


@dataclass
class Scenario:
    """The image and its boots, run one after another as the tests ask for them."""

    setup: OciSetup
    disk: Disk
    paths: dict[str, str] = field(default_factory=dict)  # "A", "1", "2" -> deployment path
    done: set[str] = field(default_factory=set)  # steps whose test passed
    timings: list[str] = field(default_factory=list)
    _boots: dict[str, Boot | Exception] = field(default_factory=dict)

    def create(self) -> None:
        started = time.monotonic()
        created = json.loads(self.disk.bootkit(
            "create", self.disk.image, self.setup.tree_a, "--size", "3G", "--esp-size", "128M",
            "--bootloader", BOOTLOADER, "--timeout", str(harness.MENU_TIMEOUT), "--force",
            "--json", *(f"--karg={k}" for k in harness.TEST_KARGS),
        ))
        self.timings.append(f"image create {time.monotonic() - started:.1f} s")
        (dep_id,) = created["deployments"]
        self.paths["A"] = f"/bootkit/deploy/{OS}/deploy/{dep_id}"

    def boot(self, step: str) -> tuple[Run, BootReport]:
        if step not in self._boots:
            earlier = STEPS[:STEPS.index(step)]
            if any(s not in self.done for s in earlier):
                pytest.skip(f"needs the steps {earlier}, which did not all pass")
            self._boots[step] = self._boot(step)
        outcome = self._boots[step]
        if isinstance(outcome, Exception):
            raise outcome
        return outcome.run, outcome.report

    def _boot(self, step: str) -> Boot | Exception:
        name = f"{BOOTLOADER}-oci{len(self.disk.boots) + 1}-{step}"
        vm = _GuestVM(Machine(self.disk.image), self.disk.workdir, name,
                      guest_args(self.setup.disks[DISK_OF_STEP[step]], step))
        try:
            result = boot(vm)
        except Exception as err:  # kept, so that a test asking again sees the same failure
            return err
        self.disk.boots.append(result.run.seconds)
        in_guest = result.report.values.get("step-seconds")
        self.timings.append(f"boot '{step}' {result.run.seconds:.1f} s"
                            + (f" (import {in_guest} s)" if in_guest else ""))
        return result


@pytest.fixture(scope="module")
def scenario(oci_setup: OciSetup, tmp_path_factory: pytest.TempPathFactory,
             request: pytest.FixtureRequest) -> Iterator[Scenario]:
    workdir = tmp_path_factory.mktemp("oci-systemd-boot")
    scenario = Scenario(oci_setup, Disk(workdir / "disk.img", BOOTLOADER, workdir))
    scenario.create()
    yield scenario
    # Kept for the record, shown even when pytest captures the output.
    lines = [f"OCI scenario: test trees and images {oci_setup.build_seconds:.1f} s",
             f"{BOOTLOADER}: " + "; ".join(scenario.timings)]
    capture = request.config.pluginmanager.get_plugin("capturemanager")
    with capture.global_and_fixture_disabled() if capture else contextlib.nullcontext():
        print("\n" + "\n".join(lines), flush=True)


# --- what a person checks -------------------------------------------------------------------


def image_of(report: BootReport, key: str, path: str) -> dict:
    (row,) = [d for d in deployments(report, key) if d["path"] == path]
    assert row["image"] is not None, row
    return dict(row["image"])


def assert_image(origin: dict, images: DebianImages, tag: str) -> None:
    """Where the deployment came from, as `bootkit status --json` tells it."""
    variant: Variant = images.versions[tag]
    assert origin["reference"] == REFERENCE, origin
    assert origin["verified"] is False, origin
    assert origin["version"] == variant.os_release.version_id, origin
    assert origin["manifest_digest"] == images.digests[tag], origin


def staged_image(report: BootReport, images: DebianImages, tag: str) -> str:
    """The path of the deployment staged in this boot, after checking it is image `tag`."""
    staged = status_of(report, "status-staged")["staged"]
    assert staged is not None, report.values["status-staged"]
    assert staged["version"] == images.versions[tag].os_release.version_id, staged
    assert staged["image"] is not None, staged
    assert_image(staged["image"], images, tag)
    return str(staged["path"])


# --- the scenario -------------------------------------------------------------------------


def test_the_image_is_staged_from_the_archive(scenario: Scenario) -> None:
    run, report = scenario.boot("oci-switch")
    a = scenario.paths["A"]
    assert_came_up_in(run, report, a, TREE_A)
    assert_mounts(report, a)
    assert_status(deployments(report, "status"), [a], default=a, booted=a)
    assert all(d["image"] is None for d in deployments(report, "status"))
    assert report.values["image-marker"] == ""
    assert report.values.get("step") == "oci-switch"
    assert_step_left_boot_read_only(report)
    scenario.paths["1"] = staged_image(report, scenario.setup.images, "1")
    assert_status(deployments(report, "status-after"), [a], default=a, booted=a)
    scenario.done.add("oci-switch")


def test_the_image_deployment_keeps_the_data_and_finds_the_next_version(
    scenario: Scenario,
) -> None:
    run, report = scenario.boot("oci-upgrade")
    images = scenario.setup.images
    a, v1 = scenario.paths["A"], scenario.paths["1"]
    assert_came_up_in(run, report, v1, images.versions["1"])
    assert_mounts(report, v1)
    assert_status(deployments(report, "status"), [v1, a], default=v1, booted=v1)
    assert_image(image_of(report, "status", v1), images, "1")
    assert_user_data(report)
    assert report.values["etc:defaults"] == images.versions["1"].defaults.strip()
    assert report.values["image-marker"] == ""
    # The step: the archive on the disk is version 2 now.
    assert report.values["upgrade-check"].split()[0] == "0", report.values["upgrade-check"]
    assert_step_left_boot_read_only(report)
    scenario.paths["2"] = staged_image(report, images, "2")
    assert scenario.paths["2"] not in (a, v1)
    scenario.done.add("oci-upgrade")


def test_the_upgrade_brings_the_changed_package_and_rolls_back(scenario: Scenario) -> None:
    run, report = scenario.boot("oci-rollback")
    images = scenario.setup.images
    v1, v2 = scenario.paths["1"], scenario.paths["2"]
    assert images.changed == [CHANGED_FILE.lstrip("/")]
    assert_came_up_in(run, report, v2, images.versions["2"])
    assert_mounts(report, v2)
    deps = deployments(report, "status")
    assert [d["path"] for d in deps][:2] == [v2, v1], deps
    assert_image(image_of(report, "status", v2), images, "2")
    assert_user_data(report)
    assert report.values["image-marker"] == f"{IMAGE_MARKER}2"
    # Nothing newer on the disk; then back to version 1.
    assert report.values["upgrade-check"].split()[0] == "77", report.values["upgrade-check"]
    after = deployments(report, "status-after")
    assert [d["path"] for d in after if d["default"]] == [v1], after
    assert [d["path"] for d in after if d["booted"]] == [v2], after
    assert_step_left_boot_read_only(report)
