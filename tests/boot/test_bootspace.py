"""A full $BOOT, for real: a 2 MiB tmpfs mounted in a private mount namespace.

A deploy whose kernel and initramfs do not fit must fail before it touches the old
boot configuration, say how much it needs, and say what `bootkit cleanup` would free.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from support.helpers import init_sysroot, make_tree, python_cli

KIB = 1 << 10

# Runs inside the namespace, where the tmpfs is mounted; prints one JSON document.
SCENARIO = textwrap.dedent(
    """
    import hashlib, json, os, subprocess, sys
    from click.testing import CliRunner
    from bootkit.cli import main

    cli, sysroot, trees = json.loads(sys.argv[1])
    boot = os.path.join(sysroot, "efi")

    def run(*args):
        r = CliRunner().invoke(main, [*args, "--sysroot", sysroot])
        return {"rc": r.exit_code, "out": r.stdout, "err": r.stderr}

    def run_process(*args):
        p = subprocess.run([*cli, *args, "--sysroot", sysroot], capture_output=True, text=True)
        return {"rc": p.returncode, "out": p.stdout, "err": p.stderr}

    def snapshot():
        found = {}
        for root, dirs, files in os.walk(sysroot):
            for name in dirs + files:
                path = os.path.join(root, name)
                if path.endswith("/bootkit/lock"):
                    continue
                if os.path.isfile(path) and not os.path.islink(path):
                    with open(path, "rb") as f:
                        found[path] = hashlib.sha256(f.read()).hexdigest()
                else:
                    found[path] = "dir"
        return found

    def free():
        st = os.statvfs(boot)
        return st.f_bavail * st.f_frsize

    steps = {"boot_size": os.statvfs(boot).f_blocks * os.statvfs(boot).f_frsize}
    for n in ("small1", "small2", "small3"):
        steps[n] = run("deploy", trees[n])
    steps["free_before"] = free()
    before = snapshot()
    steps["big"] = run_process("deploy", trees["big"])
    steps["big_unchanged"] = snapshot() == before
    steps["medium"] = run("deploy", trees["medium"])
    steps["medium_unchanged"] = snapshot() == before
    steps["cleanup"] = run("cleanup")
    steps["free_after_cleanup"] = free()
    steps["medium_after_cleanup"] = run("deploy", trees["medium"])
    steps["status"] = run("status", "--json")
    print(json.dumps(steps))
    """
)


def _tree(path: Path, kernel_kib: int, initrd_kib: int, n: int) -> Path:
    # Random bytes: every tree gets its own payload on $BOOT.
    return make_tree(
        path,
        version=str(n),
        kernel=os.urandom(kernel_kib * KIB),
        initrd=os.urandom(initrd_kib * KIB),
    )


def _namespace_works() -> str | None:
    try:
        proc = subprocess.run(
            ["unshare", "-rm", "sh", "-c", "mount -t tmpfs -o size=1m none /mnt 2>&1 || true"],
            capture_output=True,
            text=True,
            check=False,
            timeout=20,
        )
    except FileNotFoundError:
        return "unshare is not installed"
    if proc.returncode != 0 or proc.stdout.strip():
        return (
            f"cannot mount a tmpfs in a user+mount namespace: {(proc.stderr + proc.stdout).strip()}"
        )
    return None


def test_deploy_that_does_not_fit_fails_cleanly(tmp_path: Path) -> None:
    reason = _namespace_works()
    if reason:
        pytest.skip(reason)
    sysroot = tmp_path / "sys"
    sysroot.mkdir()
    init_sysroot(sysroot, "systemd-boot", "test")
    trees = {
        "small1": _tree(tmp_path / "small1", 150, 50, 1),
        "small2": _tree(tmp_path / "small2", 150, 50, 2),
        "small3": _tree(tmp_path / "small3", 150, 50, 3),
        "big": _tree(tmp_path / "big", 1500, 100, 4),
        # Does not fit next to three small ones, but does once cleanup removed one.
        "medium": _tree(tmp_path / "medium", 380, 20, 5),
    }
    args = json.dumps([python_cli(), str(sysroot), {k: str(v) for k, v in trees.items()}])
    proc = subprocess.run(
        [
            "unshare",
            "-rm",
            "sh",
            "-c",
            'mount -t tmpfs -o size=2m none "$1" && shift && exec "$@"',
            "sh",
            str(sysroot / "efi"),
            sys.executable,
            "-c",
            SCENARIO,
            args,
        ],
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    steps = json.loads(proc.stdout)
    assert steps["boot_size"] == 2 << 20
    for n in ("small1", "small2", "small3"):
        assert steps[n]["rc"] == 0, steps[n]["err"]

    big = steps["big"]
    assert big["rc"] == 1 and steps["big_unchanged"]
    lines = big["err"].splitlines()
    assert all(line.startswith("bootkit: ") for line in lines), big["err"]
    assert "Traceback" not in big["err"]
    # "not enough space on ...: the kernel and initramfs need X MiB, Y MiB free"
    assert "not enough space" in lines[0]
    need = (1500 + 100) * KIB + (1 << 20)
    assert f"need {need / (1 << 20):.1f} MiB" in lines[0]
    assert f"{steps['free_before'] / (1 << 20):.1f} MiB free" in lines[0]
    # Cleanup (keeping the two newest) would remove the oldest: one small payload.
    assert "'bootkit cleanup' would free about 0.2 MiB" in big["err"]

    medium = steps["medium"]
    assert medium["rc"] == 1 and steps["medium_unchanged"], medium
    assert "would free about 0.2 MiB" in medium["err"]

    assert steps["cleanup"]["rc"] == 0 and "1 boot payload(s)" in steps["cleanup"]["out"]
    assert steps["free_after_cleanup"] - steps["free_before"] >= 200 * KIB
    assert steps["medium_after_cleanup"]["rc"] == 0, steps["medium_after_cleanup"]["err"]
    rows = json.loads(steps["status"]["out"])["deployments"]
    assert [r["version"] for r in rows] == ["5", "3", "2"]
