"""Deploying, upgrading and switching OS images from local OCI layouts, through the CLI."""

from __future__ import annotations

import json
import os
import tarfile
from pathlib import Path

import pytest
from support.damage import assert_clean
from support.helpers import cli, fails, init_sysroot, make_tree, ok

from bootkit.sysroot.layout import Sysroot

from bootkit_testing.oci import image_from_tree

pytestmark = pytest.mark.skipif(not os.path.exists("/usr/bin/skopeo"), reason="no skopeo")

NO_UPDATE = 77
VERSION_LABEL = "org.opencontainers.image.version"


@pytest.fixture
def policy(tmp_path: Path) -> Path:
    """A trust policy that checks nothing: images from it need --unverified."""
    path = tmp_path / "policy.json"
    path.write_text(json.dumps({"default": [{"type": "insecureAcceptAnything"}]}))
    return path


@pytest.fixture
def sysroot(tmp_path: Path) -> Path:
    init_sysroot(tmp_path / "sysroot")
    return tmp_path / "sysroot"


def publish(tmp_path: Path, layout: Path, tag: str, version: str, **files: bytes) -> str:
    """Build a test OS tree of `version` and write it into `layout` as `tag`, in 3 layers."""
    tree = make_tree(tmp_path / f"tree-{version}-{len(list(tmp_path.iterdir()))}",
                     version=version, files={k.replace("__", "/"): v for k, v in files.items()})
    return image_from_tree(tree, layout, tag, 3,
                           labels={"containers.bootc": "1", VERSION_LABEL: version}).manifest


def status(sysroot: Path) -> list[dict[str, object]]:
    rows: list[dict[str, object]] = json.loads(
        ok("status", "--json", "--sysroot", sysroot).stdout)["deployments"]
    return rows


def image_of(row: dict[str, object]) -> dict[str, object]:
    image = row["image"]
    assert isinstance(image, dict)
    return image


def deploy_image(sysroot: Path, ref: str, policy: Path, *args: str) -> dict[str, object]:
    out = ok("deploy", ref, "--sysroot", sysroot, "--policy", policy, "--unverified",
             "--no-stage", "--json", *args).stdout
    row: dict[str, object] = json.loads(out)
    return row


def test_an_image_deploys_and_its_origin_is_recorded(tmp_path: Path, sysroot: Path,
                                                     policy: Path) -> None:
    layout = tmp_path / "layout"
    digest = publish(tmp_path, layout, "stable", "1", usr__share__doc="v1\n")
    row = deploy_image(sysroot, f"oci:{layout}:stable", policy)
    image = image_of(row)
    assert image["reference"] == f"oci:{layout}:stable"
    assert image["manifest_digest"] == digest
    assert image["verified"] is False and image["version"] == "1"
    tree = sysroot / "bootkit/deploy/test/deploy" / str(row["id"])
    assert (tree / "usr/share/doc").read_text() == "v1\n"
    assert row["default"] is True and row["version"] == "1"
    text = ok("status", "--sysroot", sysroot).stdout
    assert f"image: oci:{layout}:stable" in text and "UNVERIFIED" in text


def test_a_policy_that_accepts_anything_is_refused_without_unverified(
        tmp_path: Path, sysroot: Path, policy: Path) -> None:
    layout = tmp_path / "layout"
    publish(tmp_path, layout, "stable", "1")
    message = fails("deploy", f"oci:{layout}:stable", "--sysroot", sysroot, "--policy", policy)
    assert "accepts" in message and "without any signature" in message
    assert status(sysroot) == []
    assert not (sysroot / "bootkit/oci/blobs").exists() or not any(
        (sysroot / "bootkit/oci/blobs/sha256").iterdir())


def test_upgrade_check_upgrade_and_an_unchanged_image(tmp_path: Path, sysroot: Path,
                                                      policy: Path) -> None:
    layout = tmp_path / "layout"
    first = publish(tmp_path, layout, "stable", "1", usr__share__doc="v1\n")
    deploy_image(sysroot, f"oci:{layout}:stable", policy)
    check = cli("upgrade", "--check", "--json", "--sysroot", sysroot)
    assert check.exit_code == NO_UPDATE, check.stdout + check.stderr
    assert json.loads(check.stdout)["update"] is False
    second = publish(tmp_path, layout, "stable", "2", usr__share__doc="v2\n")
    check = cli("upgrade", "--check", "--json", "--sysroot", sysroot)
    assert check.exit_code == 0, check.stdout + check.stderr
    found = json.loads(check.stdout)
    assert (found["deployed"], found["available"], found["update"]) == (first, second, True)
    ok("upgrade", "--no-stage", "--sysroot", sysroot)
    rows = status(sysroot)
    assert [image_of(r)["manifest_digest"] for r in rows] == [second, first]
    assert rows[0]["default"] is True and rows[0]["version"] == "2"
    again = ok("upgrade", "--no-stage", "--sysroot", sysroot).stdout
    assert again.startswith("No update")
    assert len(status(sysroot)) == 2
    assert_clean(sysroot)


def test_download_only_then_upgrade_without_the_source(tmp_path: Path, sysroot: Path,
                                                       policy: Path) -> None:
    layout = tmp_path / "layout"
    publish(tmp_path, layout, "stable", "1")
    deploy_image(sysroot, f"oci:{layout}:stable", policy)
    second = publish(tmp_path, layout, "stable", "2", usr__share__doc="v2\n")
    ok("upgrade", "--download-only", "--sysroot", sysroot)
    assert len(status(sysroot)) == 1  # nothing switched
    os.rename(layout, tmp_path / "gone")  # the source is no longer reachable
    ok("upgrade", "--no-stage", "--sysroot", sysroot)
    rows = status(sysroot)
    assert image_of(rows[0])["manifest_digest"] == second and rows[0]["default"] is True
    assert not (sysroot / "bootkit/oci/downloaded.json").exists()


def test_switch_changes_what_upgrades_follow(tmp_path: Path, sysroot: Path,
                                             policy: Path) -> None:
    stable, testing = tmp_path / "stable", tmp_path / "testing"
    publish(tmp_path, stable, "os", "1")
    other = publish(tmp_path, testing, "os", "5", usr__share__doc="testing\n")
    deploy_image(sysroot, f"oci:{stable}:os", policy)
    ok("switch", f"oci:{testing}:os", "--policy", policy, "--unverified", "--no-stage",
       "--sysroot", sysroot)
    rows = status(sysroot)
    assert image_of(rows[0])["reference"] == f"oci:{testing}:os"
    assert image_of(rows[0])["manifest_digest"] == other
    newer = publish(tmp_path, testing, "os", "6")
    ok("upgrade", "--no-stage", "--sysroot", sysroot)
    assert image_of(status(sysroot)[0])["manifest_digest"] == newer


def test_a_shared_layer_is_stored_once_and_cleanup_drops_what_no_deployment_needs(
        tmp_path: Path, sysroot: Path, policy: Path) -> None:
    layout = tmp_path / "layout"
    publish(tmp_path, layout, "stable", "1", usr__share__big=b"x" * 200_000)
    deploy_image(sysroot, f"oci:{layout}:stable", policy)
    publish(tmp_path, layout, "stable", "2", usr__share__big=b"x" * 200_000)
    ok("upgrade", "--no-stage", "--sysroot", sysroot)
    sr = Sysroot(sysroot)
    trees = [sr.tree(d) for d in sr.deployments()]
    big = [(t / "usr/share/big").stat() for t in trees]
    assert big[0].st_ino == big[1].st_ino  # one object, in both trees and their layers
    layers_before = set(os.listdir(sysroot / "bootkit/oci/layers"))
    blobs_before = set(os.listdir(sysroot / "bootkit/oci/blobs/sha256"))
    ok("cleanup", "--keep", "0", "--sysroot", sysroot)
    assert len(status(sysroot)) == 1
    layers_after = set(os.listdir(sysroot / "bootkit/oci/layers"))
    blobs_after = set(os.listdir(sysroot / "bootkit/oci/blobs/sha256"))
    assert layers_after < layers_before and blobs_after < blobs_before
    kept = image_of(status(sysroot)[0])
    assert {d.removeprefix("sha256:") for d in kept_diff_ids(sysroot)} == layers_after
    assert str(kept["manifest_digest"]).removeprefix("sha256:") in blobs_after
    assert_clean(sysroot)


def kept_diff_ids(sysroot: Path) -> list[str]:
    sr = Sysroot(sysroot)
    (dep,) = sr.deployments()
    assert dep.image is not None
    return list(dep.image.diff_ids)


@pytest.mark.parametrize(("labels", "arch", "message"), [
    ({}, "amd64", "bootable"),
    ({"containers.bootc": "1"}, "s390x", "s390x"),
])
def test_an_image_not_made_for_this_machine_is_refused_before_download(
        tmp_path: Path, sysroot: Path, policy: Path, labels: dict[str, str], arch: str,
        message: str) -> None:
    layout = tmp_path / "layout"
    tree = make_tree(tmp_path / "tree")
    image_from_tree(tree, layout, "x", 2, labels=labels, architecture=arch)
    error = fails("deploy", f"oci:{layout}:x", "--sysroot", sysroot, "--policy", policy,
                  "--unverified", "--no-stage")
    assert message in error
    assert not (sysroot / "bootkit/oci/blobs").exists()
    assert status(sysroot) == []


def test_a_tampered_layer_is_refused_and_nothing_is_deployed(tmp_path: Path, sysroot: Path,
                                                             policy: Path) -> None:
    layout = tmp_path / "layout"
    digest = publish(tmp_path, layout, "stable", "1")
    manifest = json.loads((layout / "blobs/sha256" / digest.removeprefix("sha256:")).read_bytes())
    blob = layout / "blobs/sha256" / manifest["layers"][-1]["digest"].removeprefix("sha256:")
    data = bytearray(blob.read_bytes())
    data[len(data) // 2] ^= 1
    blob.write_bytes(bytes(data))
    error = fails("deploy", f"oci:{layout}:stable", "--sysroot", sysroot, "--policy", policy,
                  "--unverified", "--no-stage")
    assert "digest" in error.lower() or "did not match" in error
    assert status(sysroot) == []
    assert not list((sysroot / "bootkit/deploy/test/deploy").iterdir())
    layers = sysroot / "bootkit/oci/layers"
    assert not layers.exists() or not [n for n in os.listdir(layers) if n.startswith(".")]


def test_an_oci_archive_deploys_and_upgrades_from_the_same_path(
        tmp_path: Path, sysroot: Path, policy: Path) -> None:
    """An update carried on removable media: the archive at one path, replaced."""
    layout, archive = tmp_path / "layout", tmp_path / "media/os.tar"
    archive.parent.mkdir()
    publish(tmp_path, layout, "stable", "1")
    archive_of(layout, archive)
    deploy_image(sysroot, f"oci-archive:{archive}:stable", policy)
    second = publish(tmp_path, layout, "stable", "2", usr__share__doc="v2\n")
    archive_of(layout, archive)
    assert cli("upgrade", "--check", "--sysroot", sysroot).exit_code == 0
    ok("upgrade", "--no-stage", "--sysroot", sysroot)
    rows = status(sysroot)
    assert image_of(rows[0])["manifest_digest"] == second
    assert image_of(rows[0])["reference"] == f"oci-archive:{archive}:stable"


def archive_of(layout: Path, archive: Path) -> None:
    """The layout as one tar file, which is all an oci-archive is."""
    tmp = archive.with_suffix(".tmp")
    with tarfile.open(tmp, "w") as tf:
        for path in sorted(layout.rglob("*")):
            tf.add(path, arcname=str(path.relative_to(layout)), recursive=False)
    os.replace(tmp, archive)


def test_a_version_label_no_menu_could_show_is_left_out(tmp_path: Path, sysroot: Path,
                                                        policy: Path) -> None:
    layout = tmp_path / "layout"
    tree = make_tree(tmp_path / "tree")
    image_from_tree(tree, layout, "x", 1,
                    labels={"containers.bootc": "1", VERSION_LABEL: "1\n\x1b[2Jtitle"})
    row = deploy_image(sysroot, f"oci:{layout}:x", policy)
    assert image_of(row)["version"] is None
    assert "\x1b" not in ok("status", "--sysroot", sysroot).stdout


def test_a_layout_index_cut_short_by_a_crash_is_started_afresh(
        tmp_path: Path, sysroot: Path, policy: Path) -> None:
    layout = tmp_path / "layout"
    publish(tmp_path, layout, "stable", "1")
    deploy_image(sysroot, f"oci:{layout}:stable", policy)
    index = sysroot / "bootkit/oci/index.json"
    index.write_text(index.read_text()[:20])
    publish(tmp_path, layout, "stable", "2")
    ok("upgrade", "--no-stage", "--sysroot", sysroot)
    assert [r["version"] for r in status(sysroot)] == ["2", "1"]
    assert_clean(sysroot)


def test_a_policy_named_relative_to_the_working_directory_is_recorded_whole(
        tmp_path: Path, sysroot: Path, policy: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    layout = tmp_path / "layout"
    publish(tmp_path, layout, "stable", "1")
    monkeypatch.chdir(policy.parent)
    row = deploy_image(sysroot, f"oci:{layout}:stable", Path(policy.name))
    assert image_of(row)["policy"] == str(policy)
    monkeypatch.chdir("/")
    assert cli("upgrade", "--check", "--sysroot", sysroot).exit_code == NO_UPDATE


def test_a_staged_image_shows_where_it_came_from_and_upgrade_follows_it(
        tmp_path: Path, sysroot: Path, policy: Path) -> None:
    stable, testing = tmp_path / "stable", tmp_path / "testing"
    publish(tmp_path, stable, "os", "1")
    deploy_image(sysroot, f"oci:{stable}:os", policy)
    staged = publish(tmp_path, testing, "os", "7")
    ok("switch", f"oci:{testing}:os", "--policy", policy, "--unverified", "--stage",
       "--sysroot", sysroot)
    shown = json.loads(ok("status", "--json", "--sysroot", sysroot).stdout)["staged"]
    assert shown["image"]["reference"] == f"oci:{testing}:os"
    assert shown["image"]["manifest_digest"] == staged
    assert f"image: oci:{testing}:os" in ok("status", "--sysroot", sysroot).stdout
    # An upgrade now follows the staged image, which is still what its tag names.
    assert ok("upgrade", "--sysroot", sysroot).stdout.startswith("No update")


def test_the_image_layout_is_root_s_alone(tmp_path: Path, sysroot: Path, policy: Path) -> None:
    layout = tmp_path / "layout"
    publish(tmp_path, layout, "stable", "1")
    deploy_image(sysroot, f"oci:{layout}:stable", policy)
    assert (sysroot / "bootkit/oci").stat().st_mode & 0o777 == 0o700
