"""The Debian test image's layers, on a small tree laid out as dpkg leaves one (no boot)."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tarfile
from pathlib import Path

import pytest

from bootkit_testing.debian import image
from bootkit_testing.debian.guest_report import IMAGE_MARKER

# package -> files it lists (dpkg's paths: /bin is usr/bin, as in a merged-/usr tree)
PACKAGES = {
    "coreutils": ["/bin/cat", "/bin/ls", "/usr/share/coreutils/big"],
    "hostname": ["/bin/hostname", "/bin/dnsdomainname", "/usr/share/doc/hostname/copyright"],
    "libc6:amd64": ["/lib/x86_64-linux-gnu/libc.so.6", "/usr/lib/x86_64-linux-gnu/libm.so.6"],
    "python3.11": ["/usr/lib/python3.11/os.py"],
}
SIZES = {"usr/share/coreutils/big": 5000, "usr/lib/x86_64-linux-gnu/libc.so.6": 4000}
STATUS = "".join(
    f"Package: {p.partition(':')[0]}\nStatus: install ok installed\nVersion: 1.0\n\n"
    for p in PACKAGES
)


def _dpkg_tree(root: Path) -> Path:
    for name in ("usr/bin", "usr/lib", "etc", "var/lib/dpkg/info"):
        (root / name).mkdir(parents=True)
    (root / "bin").symlink_to("usr/bin")
    (root / "lib").symlink_to("usr/lib")
    for package, paths in PACKAGES.items():
        (root / image.DPKG_INFO / f"{package}.list").write_text(
            "/.\n" + "".join(f"{p}\n" for p in paths))
        for listed in paths:
            path = root / listed.lstrip("/")
            path.parent.mkdir(parents=True, exist_ok=True)
            if listed == "/bin/dnsdomainname":
                path.symlink_to("hostname")
            elif listed.startswith("/usr/share/doc"):
                continue  # trimmed from the tree, as in the test base
            else:
                rel = os.path.relpath(path.resolve(), root.resolve())
                path.write_bytes(b"x" * SIZES.get(rel, 100))
    (root / "usr/lib/python3.11/__pycache__").mkdir()
    (root / "usr/lib/python3.11/__pycache__/os.cpython-311.pyc").write_bytes(b"pyc")
    (root / "usr/lib/modules/6.1").mkdir(parents=True)
    (root / "usr/lib/modules/6.1/vmlinuz").write_bytes(b"k" * 3000)
    (root / "usr/lib/os-release").write_text('VERSION_ID="1"\n')
    (root / "etc/hostname").write_text("debian\n")
    (root / "var/lib/dpkg/status").write_text(STATUS)
    (root / image.DPKG_INFO / "hostname.md5sums").write_text(
        f"{'0' * 32}  bin/hostname\n{'1' * 32}  usr/share/doc/hostname/copyright\n")
    return root


def _layers(layout: Path, digest: str) -> list[str]:
    manifest = json.loads((layout / "blobs/sha256" / digest.partition(":")[2]).read_bytes())
    return [layer["digest"] for layer in manifest["layers"]]


def _names(layout: Path, digest: str) -> set[str]:
    with tarfile.open(layout / "blobs/sha256" / digest.partition(":")[2]) as tar:
        return set(tar.getnames())


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    return _dpkg_tree(tmp_path / "tree")


def test_files_go_with_the_package_that_lists_them(tree: Path) -> None:
    owners = image.package_owners(tree)
    assert owners["usr/bin/hostname"] == "hostname"
    assert owners["usr/bin/dnsdomainname"] == "hostname"
    assert owners["usr/lib/x86_64-linux-gnu/libc.so.6"] == "libc6"
    assert "usr/share/doc/hostname/copyright" not in owners  # listed, but not in the tree
    assert "usr/bin" not in owners  # directories belong to no one package


def test_two_versions_one_package_apart_differ_in_two_layers(tree: Path, tmp_path: Path) -> None:
    plan = image.LayerPlan.of_tree(tree, package_layers=3)
    assert plan.count == 4
    layout = tmp_path / "layout"
    v1 = image.image_of_tree(tree, plan, layout, "1", image.IMAGE_V1)

    tree2 = tmp_path / "tree2"
    shutil.copytree(tree, tree2, symlinks=True)
    assert image.change_package(tree2, "hostname", "2") == ["usr/bin/hostname"]
    v2 = image.image_of_tree(tree2, plan, layout, "2", image.IMAGE_V2)

    first, second = _layers(layout, v1), _layers(layout, v2)
    assert len(first) == len(second) == 4
    changed = [i for i, (a, b) in enumerate(zip(first, second, strict=True)) if a != b]
    hostname_layer = plan.layer_of["usr/bin/hostname"]
    assert changed == [hostname_layer, 3]
    # The changed layer holds the package's files and the directories above them.
    assert {"usr", "usr/bin", "usr/bin/hostname", "usr/bin/dnsdomainname"} <= _names(
        layout, second[hostname_layer])
    # Version files and /etc are in the last layer; byte code goes with its source.
    last = _names(layout, second[3])
    assert {"var/lib/dpkg/status", "usr/lib/os-release", "etc/hostname", "bin"} <= last
    assert "usr/bin/hostname" not in last
    assert (plan.layer_of["usr/lib/python3.11/__pycache__/os.cpython-311.pyc"]
            == plan.layer_of["usr/lib/python3.11/os.py"])
    assert (tree2 / "usr/bin/hostname").read_bytes().endswith(f"\n{IMAGE_MARKER}2\n".encode())
    assert (tree / "usr/bin/hostname").read_bytes() == b"x" * 100
    assert (tree2 / image.DPKG_INFO / "hostname.md5sums").read_text() == (
        f"{hashlib.md5((tree2 / 'usr/bin/hostname').read_bytes()).hexdigest()}  bin/hostname\n"
        f"{'1' * 32}  usr/share/doc/hostname/copyright\n")
    status = (tree2 / "var/lib/dpkg/status").read_text()
    assert "Package: hostname\nStatus: install ok installed\nVersion: 1.0+bootkit2\n" in status
    assert status.count("+bootkit2") == 1


def test_the_config_says_bootable_amd64_and_the_version(tree: Path, tmp_path: Path) -> None:
    layout = tmp_path / "layout"
    digest = image.image_of_tree(tree, image.LayerPlan.of_tree(tree, 2), layout, "1",
                                 image.IMAGE_V1)
    manifest = json.loads((layout / "blobs/sha256" / digest.partition(":")[2]).read_bytes())
    config = json.loads(
        (layout / "blobs/sha256" / manifest["config"]["digest"].partition(":")[2]).read_bytes())
    assert config["architecture"] == "amd64" and config["os"] == "linux"
    assert config["config"]["Labels"] == {
        image.LABEL_BOOTABLE: "1", image.LABEL_VERSION: image.IMAGE_V1.os_release.version_id,
    }
    assert len(config["rootfs"]["diff_ids"]) == 3


def test_the_archive_holds_one_image(tree: Path, tmp_path: Path) -> None:
    layout = tmp_path / "layout"
    plan = image.LayerPlan.of_tree(tree, 2)
    image.image_of_tree(tree, plan, layout, "1", image.IMAGE_V1)
    v2 = image.image_of_tree(tree, plan, layout, "2", image.IMAGE_V2)
    archive = tmp_path / "os.tar"
    image.write_archive(layout, "2", archive)
    with tarfile.open(archive) as tar:
        index = json.loads(tar.extractfile("index.json").read())  # type: ignore[union-attr]
        names = set(tar.getnames())
    assert [m["digest"] for m in index["manifests"]] == [v2]
    assert {"oci-layout", f"blobs/sha256/{v2.partition(':')[2]}"} <= names
    assert len([n for n in names if n.startswith("blobs/sha256/")]) == 2 + 3
