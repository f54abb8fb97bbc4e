"""The README's walk-through from publisher to machine, step by step: an image built with
umoci from a root tree, signed and pushed with skopeo, deployed, upgraded and rolled back."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
from support.helpers import cli, init_sysroot, make_tree, ok

from bootkit_testing.imagetrust import ImageTrust
from bootkit_testing.registry import Registry

NO_UPDATE = 77

pytestmark = pytest.mark.skipif(shutil.which("umoci") is None, reason="no umoci")


def run(*argv: str | Path, env: dict[str, str] | None = None) -> None:
    subprocess.run([str(a) for a in argv], check=True, capture_output=True,
                   env={**os.environ, **(env or {})})


def build(layout: Path, tree: Path, version: str) -> None:
    """umoci init/new/insert/config, as the README shows them."""
    if not layout.exists():
        run("umoci", "init", "--layout", layout)
    rootless = [] if os.geteuid() == 0 else ["--rootless"]
    run("umoci", "new", "--image", f"{layout}:{version}")
    run("umoci", "insert", *rootless, "--image", f"{layout}:{version}", f"{tree}/", "/")
    run("umoci", "config", *rootless, "--image", f"{layout}:{version}",
        "--config.label", "containers.bootc=1",
        "--config.label", f"org.opencontainers.image.version={version}")


def push(registry: Registry, trust: ImageTrust, layout: Path, version: str) -> None:
    run("skopeo", "--insecure-policy", "copy", "--sign-by", trust.fingerprint,
        "--registries.d", trust.registries_d, "--dest-tls-verify=false",
        f"oci:{layout}:{version}", f"docker://{registry.host}/myos:stable",
        env={**registry.env, **trust.env})


def test_publish_deploy_upgrade_roll_back(tmp_path: Path, registry_environ: Registry,
                                          image_trust: ImageTrust) -> None:
    registry, trust = registry_environ, image_trust
    sysroot = tmp_path / "sysroot"
    init_sysroot(sysroot)
    layout = tmp_path / "myos"
    build(layout, make_tree(tmp_path / "rootfs-v1", version="1"), "1")
    push(registry, trust, layout, "1")
    machine = ["--sysroot", str(sysroot), "--policy", str(trust.policy),
               "--registries-d", str(trust.registries_d)]

    ok("deploy", f"docker://{registry.host}/myos:stable", "--no-stage", *machine)
    assert cli("upgrade", "--check", "--sysroot", sysroot).exit_code == NO_UPDATE
    build(layout, make_tree(tmp_path / "rootfs-v2", version="2"), "2")
    push(registry, trust, layout, "2")
    assert cli("upgrade", "--check", "--sysroot", sysroot).exit_code == 0
    ok("upgrade", "--no-stage", "--sysroot", sysroot)
    shown = ok("status", "--sysroot", sysroot).stdout
    assert "signature verified" in shown and "version 2" in shown
    ok("rollback", "--sysroot", sysroot)
    rows = json.loads(ok("status", "--json", "--sysroot", sysroot).stdout)["deployments"]
    assert [(r["version"], r["default"]) for r in rows] == [("1", True), ("2", False)]
