"""OS images from a registry on 127.0.0.1: signatures checked by the policy, and what
an upgrade costs on the wire."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
from pathlib import Path

import pytest
from support.helpers import cli, fails, init_sysroot, make_tree, ok

from bootkit_testing.imagetrust import ImageTrust
from bootkit_testing.oci import Member, image_from_tree
from bootkit_testing.registry import Registry

NO_UPDATE = 77
BIG = os.urandom(600_000)  # incompressible: its layer's blob is about this size


@pytest.fixture
def sysroot(tmp_path: Path) -> Path:
    init_sysroot(tmp_path / "sysroot")
    return tmp_path / "sysroot"


def _layer_of(m: Member) -> int:
    """The big file alone in the first layer, the docs last, the rest between."""
    if m.path.startswith("usr/share/big"):
        return 0
    return 2 if m.path.startswith("usr/share/doc") else 1


def publish(tmp_path: Path, registry: Registry, version: str, *,
            trust: ImageTrust | None = None, name: str = "myos") -> str:
    """Version `version` of a test OS, pushed as myos:stable (signed with `trust`'s key)."""
    tree = make_tree(tmp_path / f"tree-{version}", version=version,
                     files={"usr/share/big": BIG, "usr/share/doc": f"v{version}\n"})
    for path in [tree, *tree.rglob("*")]:
        # Rebuilt layers are the same blobs only if their files' times are the same too.
        os.utime(path, (1_700_000_000, 1_700_000_000), follow_symlinks=False)
    layout = tmp_path / f"layout-{version}"
    image_from_tree(tree, layout, "stable", _layer_of,
                    labels={"containers.bootc": "1", "org.opencontainers.image.version": version})
    return registry.push(layout, "stable", name, trust=trust)


def deployments(sysroot: Path) -> list[dict[str, object]]:
    rows: list[dict[str, object]] = json.loads(
        ok("status", "--json", "--sysroot", sysroot).stdout)["deployments"]
    return rows


def test_a_signed_image_deploys_verified(tmp_path: Path, sysroot: Path,
                                         registry_environ: Registry,
                                         image_trust: ImageTrust) -> None:
    digest = publish(tmp_path, registry_environ, "1", trust=image_trust)
    ok("deploy", registry_environ.reference("myos", "stable"), "--policy", image_trust.policy,
       "--registries-d", image_trust.registries_d, "--no-stage", "--sysroot", sysroot)
    (row,) = deployments(sysroot)
    image = row["image"]
    assert isinstance(image, dict)
    assert image["manifest_digest"] == digest
    assert image["verified"] is True and image["policy"] == str(image_trust.policy)
    assert "signature verified" in ok("status", "--sysroot", sysroot).stdout


@pytest.mark.parametrize("signer", ["none", "other key"])
def test_an_image_without_a_trusted_signature_is_refused(
        tmp_path: Path, sysroot: Path, registry_environ: Registry, image_trust: ImageTrust,
        signer: str) -> None:
    publish(tmp_path, registry_environ, "1",
            trust=image_trust.other_key() if signer == "other key" else None)
    message = fails("deploy", registry_environ.reference("myos", "stable"), "--policy",
                    image_trust.policy, "--registries-d", image_trust.registries_d,
                    "--no-stage", "--sysroot", sysroot)
    assert "rejected" in message or "signature" in message, message
    assert deployments(sysroot) == []
    assert not list((sysroot / "bootkit/deploy/test/deploy").iterdir())


def test_unverified_takes_an_unsigned_image_and_says_so(
        tmp_path: Path, sysroot: Path, registry_environ: Registry,
        image_trust: ImageTrust) -> None:
    publish(tmp_path, registry_environ, "1")
    ok("deploy", registry_environ.reference("myos", "stable"), "--policy", image_trust.policy,
       "--registries-d", image_trust.registries_d, "--unverified", "--no-stage",
       "--sysroot", sysroot)
    (row,) = deployments(sysroot)
    assert isinstance(row["image"], dict) and row["image"]["verified"] is False
    assert "UNVERIFIED" in ok("status", "--sysroot", sysroot).stdout


def test_check_costs_a_manifest_and_an_update_downloads_only_the_changed_layer(
        tmp_path: Path, sysroot: Path, registry_environ: Registry,
        image_trust: ImageTrust) -> None:
    registry = registry_environ
    first = publish(tmp_path, registry, "1", trust=image_trust)
    ok("deploy", registry.reference("myos", "stable"), "--policy", image_trust.policy,
       "--registries-d", image_trust.registries_d, "--no-stage", "--sysroot", sysroot)

    registry.reset_count()
    unchanged = cli("upgrade", "--check", "--sysroot", sysroot)
    assert unchanged.exit_code == NO_UPDATE, unchanged.stdout + unchanged.stderr
    assert registry.served_bytes() < 100_000

    second = publish(tmp_path, registry, "2", trust=image_trust)
    registry.reset_count()
    check = cli("upgrade", "--check", "--json", "--sysroot", sysroot)
    assert check.exit_code == 0, check.stdout + check.stderr
    found = json.loads(check.stdout)
    assert (found["deployed"], found["available"]) == (first, second)
    assert found["download_layers"] == 2  # the docs' layer and the one holding os-release
    assert found["download_bytes"] < len(BIG)
    assert registry.served_bytes() < 100_000

    registry.reset_count()
    ok("upgrade", "--no-stage", "--sysroot", sysroot)
    assert registry.served_bytes() < len(BIG) // 2  # the big layer was not fetched again
    rows = deployments(sysroot)
    assert [r["version"] for r in rows] == ["2", "1"]
    image = rows[0]["image"]
    assert isinstance(image, dict) and image["verified"] is True

    registry.reset_count()
    assert ok("upgrade", "--no-stage", "--sysroot", sysroot).stdout.startswith("No update")
    assert registry.served_bytes() < 100_000
    assert len(deployments(sysroot)) == 2


def test_an_image_pushed_with_a_docker_manifest_deploys_under_its_own_digest(
        tmp_path: Path, sysroot: Path, registry_environ: Registry,
        image_trust: ImageTrust) -> None:
    """`docker push` writes Docker schema 2 manifests: kept as they are, not converted,
    so the digest recorded is the one the registry serves (and a signature names)."""
    registry = registry_environ
    tree = make_tree(tmp_path / "tree")
    image_from_tree(tree, tmp_path / "layout", "v1", 2)
    subprocess.run(
        ["skopeo", "--insecure-policy", "copy", "--format", "v2s2", "--dest-tls-verify=false",
         f"oci:{tmp_path / 'layout'}:v1", f"docker://{registry.host}/myos:v1"],
        check=True, capture_output=True, env={**os.environ, **registry.env})
    raw = subprocess.run(
        ["skopeo", "inspect", "--raw", "--tls-verify=false", f"docker://{registry.host}/myos:v1"],
        check=True, capture_output=True, env={**os.environ, **registry.env}).stdout
    assert b"application/vnd.docker.distribution.manifest.v2+json" in raw
    ok("deploy", registry.reference("myos", "v1"), "--policy", image_trust.policy,
       "--unverified", "--no-stage", "--sysroot", sysroot)
    (row,) = deployments(sysroot)
    assert isinstance(row["image"], dict)
    assert row["image"]["manifest_digest"] == "sha256:" + hashlib.sha256(raw).hexdigest()
