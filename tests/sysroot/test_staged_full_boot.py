"""Finalizing onto a full $BOOT, for real: a small tmpfs mounted in a private mount
namespace, filled up after staging. Nothing switches, and the reason lands in the
marker that staging reserved on $BOOT."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from support.helpers import init_sysroot, make_tree

SCENARIO = textwrap.dedent(
    """
    import errno, json, os, sys
    from pathlib import Path
    from click.testing import CliRunner
    from bootkit import contract
    from bootkit.cli import main
    from bootkit.sysroot.layout import Sysroot
    from support.helpers import refs_of_entries, sdboot_menu

    sysroot, run_dir, trees = json.loads(sys.argv[1])
    contract.RUN_DIR = Path(run_dir)
    boot = Path(sysroot) / "efi"

    def run(*args):
        r = CliRunner().invoke(main, [*args, "--sysroot", sysroot])
        return {"rc": r.exit_code, "out": r.stdout, "err": r.stderr}

    steps = {}
    for n in ("1", "2"):
        steps["deploy" + n] = run("deploy", trees[n])
    steps["menu_before"] = refs_of_entries(sdboot_menu(boot))
    steps["stage"] = run("deploy", "--stage", trees["3"])
    fd = os.open(boot / "filler", os.O_WRONLY | os.O_CREAT)
    try:
        while True:
            os.write(fd, b"x" * 4096)
    except OSError as err:
        assert err.errno == errno.ENOSPC, err
    os.close(fd)
    steps["finalize"] = run("finalize-staged")
    steps["menu_after"] = refs_of_entries(sdboot_menu(boot))
    steps["check"] = run("finalize-staged", "--check")
    os.unlink(boot / "filler")
    steps["update"] = run("bootloader", "update")
    steps["status"] = run("status", "--json")
    print(json.dumps(steps))
    """
)


@pytest.mark.skipif(shutil.which("unshare") is None, reason="unshare is not installed")
def test_finalizing_onto_a_full_boot_switches_nothing(tmp_path: Path) -> None:
    sysroot = tmp_path / "sys"
    init_sysroot(sysroot, "systemd-boot", "test")
    trees = {str(n): str(make_tree(tmp_path / f"tree{n}", version=str(n),
                                   kernel=f"kernel {n}\n".encode() * 200)) for n in (1, 2, 3)}
    args = json.dumps([str(sysroot), str(tmp_path / "run"), trees])
    tests_dir = Path(__file__).resolve().parents[1]
    proc = subprocess.run(
        ["unshare", "-m", "sh", "-c", 'mount -t tmpfs -o size=2m none "$1" && shift && exec "$@"',
         "sh", str(sysroot / "efi"), sys.executable, "-c", SCENARIO, args],
        capture_output=True, text=True, check=False, timeout=120,
        env={"PYTHONPATH": f"{tests_dir}:{Path.cwd()}", "PATH": "/usr/sbin:/usr/bin:/sbin:/bin"},
    )
    if "mount:" in proc.stderr or "unshare:" in proc.stderr:
        pytest.skip(f"cannot mount a tmpfs in a mount namespace: {proc.stderr.strip()}")
    assert proc.returncode == 0, proc.stderr
    steps = json.loads(proc.stdout)
    for step in ("deploy1", "deploy2", "stage", "update"):
        assert steps[step]["rc"] == 0, steps[step]["err"]
    finalize = steps["finalize"]
    assert finalize["rc"] == 1 and "nothing was switched" in finalize["err"]
    assert "no space left" in finalize["err"] and "Traceback" not in finalize["err"]
    assert steps["menu_after"] == steps["menu_before"]
    check = steps["check"]
    assert check["rc"] == 1 and "no space left" in check["err"]
    found = json.loads(steps["status"]["out"])
    assert found["staged"] is None and found["finalize_failure"]["version"] == "3"
    assert [f"test/{d['id']}" for d in found["deployments"]] == steps["menu_before"]
