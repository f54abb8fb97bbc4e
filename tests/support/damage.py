"""A sysroot worth damaging, and how to check what a repair kept: shared by the tests of
recovery and of `bootkit fsck`."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

from bootkit.records.deployment import Deployment
from bootkit.sysroot.layout import Sysroot
from support.helpers import cli, deploy_tree, init_sysroot, make_tree, ok, snapshot, untidy

# Deployments 1 and 3 share a kernel, and so a payload on $BOOT.
KERNELS = {1: b"kernel A\n", 2: b"kernel B\n", 3: b"kernel A\n"}


def populated_sysroot(base: Path, bootloader: str) -> Path:
    """Deployments 1-3 (trees in `base`/tree<n>), 2 the default, each with an /etc edit
    and kernel arguments, and a file of the admin's in the shared /var."""
    sysroot = base / "sys"
    sr = init_sysroot(sysroot, bootloader)
    for n, kernel in KERNELS.items():
        tree = make_tree(base / f"tree{n}", version=f"{n}", kernel=kernel)
        deploy_tree(sr, tree, kargs=["console=ttyS0", f"n={n}"])
    for dep in sr.deployments():
        (sr.tree(dep) / "etc/admin.conf").write_text(f"edited in {dep.id}\n")
    (sr.stateroot("test") / "var/lib/app/mine").write_text("user data\n")
    ok("set-default", "--sysroot", sysroot, "2")
    return sysroot


def copy_of(sysroot: Path, dest: Path) -> Path:
    """A copy that keeps hardlinks (the store relies on link counts), modes and owners."""
    subprocess.run(["cp", "-a", str(sysroot), str(dest)], check=True)
    return dest


def by_serial(sr: Sysroot, serial: int) -> Deployment:
    return next(d for d in sr.deployments() if d.serial == serial)


def user_data(sysroot: Path) -> dict[str, object]:
    """What the admin made: each deployment's /etc and the shared /var."""
    root = sysroot / "bootkit/deploy/test"
    out = {}
    for d in sorted((root / "deploy").iterdir()):
        if d.is_dir() and not d.name.startswith(".") and (d / "etc").is_dir():
            out |= {f"{d.name}/{k}": v for k, v in snapshot(d / "etc").items()}
    return out | {f"var/{k}": v for k, v in snapshot(root / "var").items()}


def kept_all_of(before: dict[str, object], sysroot: Path) -> bool:
    """Whether the user data of `before` is still there, but for deployments removed."""
    after = user_data(sysroot)
    present = {k.split("/")[0] for k in after}
    return {k: v for k, v in before.items() if k.split("/")[0] in present} == {
        k: v for k, v in after.items() if k in before
    }


# --- running fsck -----------------------------------------------------------------------


def fsck(sysroot: Path, *args: str) -> tuple[int, dict[str, Any]]:
    """`bootkit fsck --json`: its exit status and report."""
    result = cli("fsck", "--sysroot", sysroot, "--json", *args)
    assert "Traceback" not in result.stderr, result.stderr
    return result.exit_code, json.loads(result.stdout) if result.stdout else {}


def found(report: dict[str, Any]) -> list[tuple[str, str]]:
    return [(p["kind"], p["subject"]) for p in report["problems"]]


def check_then_repair(
    sysroot: Path, expected: list[tuple[str, str]]
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Run fsck (it finds `expected`, each at least once, and writes nothing), then fsck
    --repair (it finds the first of them, and keeps the admin's data); both reports."""
    before = snapshot(sysroot)
    code, report = fsck(sysroot)
    assert code == 1, report
    assert set(found(report)) == set(expected), report
    assert snapshot(sysroot) == before, "a check without --repair wrote something"
    data = user_data(sysroot)
    code, repaired = fsck(sysroot, "--repair")
    assert code == 1, repaired
    # A repair can make what follows from the first problem go away (the entries of a
    # boot file that is copied again, say).
    assert expected[0] in found(repaired) and set(found(repaired)) <= set(expected), repaired
    assert {k: v for k, v in data.items() if k in user_data(sysroot)} == data, (
        "repair deleted user data"
    )
    return report, repaired


def all_repaired(report: dict[str, Any]) -> bool:
    return all(p["repaired"] and not p["hint"] for p in report["problems"])


def assert_clean(sysroot: Path) -> None:
    code, report = fsck(sysroot)
    assert code == 0 and report["problems"] == [], report
    assert not untidy(Sysroot(sysroot))

