"""The 90bootkit dracut module: its files, its unit's ordering, and a real dracut build."""

from __future__ import annotations

import configparser
import os
import shutil
import stat
import subprocess
from importlib import resources
from pathlib import Path

import pytest
from click.testing import CliRunner

from bootkit.cli import main
from bootkit.initramfs import read_image
from bootkit.initramfs.dracut import DRACUT_MODULE_FILES, install_dracut_module
from bootkit.initramfs.reader import members as final_members

from bootkit_testing.dracut import DRACUT_BASE, dracut_base_with_bootkit

REPO = Path(__file__).resolve().parents[2]
MODULE = REPO / "dracut/90bootkit"


def _unit() -> configparser.ConfigParser:
    unit = configparser.ConfigParser(interpolation=None)
    unit.optionxform = str  # type: ignore[assignment,method-assign]
    unit.read_string((MODULE / "bootkit-prepare-root.service").read_text())
    return unit


def test_unit_runs_between_sysroot_mount_and_switch_root() -> None:
    unit = _unit()
    assert "sysroot.mount" in unit["Unit"]["After"].split()
    assert "initrd-root-fs.target" in unit["Unit"]["Before"].split()
    assert "initrd-parse-etc.service" in unit["Unit"]["Before"].split()
    assert unit["Unit"]["ConditionKernelCommandLine"] == "bootkit"
    assert unit["Unit"]["OnFailure"] == "emergency.target"
    assert unit["Unit"]["DefaultDependencies"] == "no"
    assert unit["Service"]["Type"] == "oneshot"
    assert unit["Service"]["RemainAfterExit"] == "yes"
    assert unit["Service"]["ExecStart"] == "/usr/lib/bootkit/bootkit-prepare-root"


def test_package_ships_the_canonical_files() -> None:
    shipped = resources.files("bootkit").joinpath("data", "dracut", "90bootkit")
    for name in DRACUT_MODULE_FILES:
        assert shipped.joinpath(name).read_bytes() == (MODULE / name).read_bytes(), name


def test_dracut_install_copies_the_module(tmp_path: Path) -> None:
    dest = tmp_path / "modules.d/90bootkit"
    result = CliRunner().invoke(main, ["dracut", "install", "--dest", str(dest)])
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in dest.iterdir()) == sorted(DRACUT_MODULE_FILES)
    for name, mode in DRACUT_MODULE_FILES.items():
        assert (dest / name).read_bytes() == (MODULE / name).read_bytes()
        assert stat.S_IMODE((dest / name).stat().st_mode) == mode


def test_install_replaces_an_older_module_and_names_its_files(tmp_path: Path) -> None:
    dest = tmp_path / "90bootkit"
    dest.mkdir()
    (dest / "module-setup.sh").write_text("# an older version\n")
    (dest / "module-setup.sh").chmod(0o600)
    written = install_dracut_module(dest)
    assert written == [dest / name for name in DRACUT_MODULE_FILES]
    assert (dest / "module-setup.sh").read_bytes() == (MODULE / "module-setup.sh").read_bytes()
    assert stat.S_IMODE((dest / "module-setup.sh").stat().st_mode) == 0o755
    assert sorted(p.name for p in dest.iterdir()) == sorted(DRACUT_MODULE_FILES)  # no leftovers


@pytest.mark.skipif(shutil.which("shellcheck") is None, reason="shellcheck not installed")
def test_module_scripts_are_shellcheck_clean() -> None:
    subprocess.run(["shellcheck", str(MODULE / "module-setup.sh")], check=True)
    subprocess.run(["shellcheck", "-s", "sh", str(MODULE / "bootkit-prepare-root.sh")], check=True)


@pytest.mark.slow
@pytest.mark.skipif(
    shutil.which("dracut") is None or not (DRACUT_BASE / "modules.d/01systemd-initrd").is_dir(),
    reason="dracut with systemd support not installed",
)
@pytest.mark.skipif(not Path("/usr/lib/systemd/systemd").exists(), reason="systemd not installed")
def test_dracut_builds_an_initramfs_with_the_hook(tmp_path: Path) -> None:
    base = dracut_base_with_bootkit(tmp_path / "dracut")
    (tmp_path / "conf.d").mkdir()
    image = tmp_path / "initrd.img"
    subprocess.run(
        [
            "dracut",
            "--quiet",
            "--force",
            "--no-hostonly",
            "--no-kernel",
            "--modules",
            "bootkit",
            "--conf",
            "/dev/null",
            "--confdir",
            str(tmp_path / "conf.d"),
            "--tmpdir",
            str(tmp_path),
            str(image),
        ],
        env={**os.environ, "dracutbasedir": str(base)},
        check=True,
        capture_output=True,
    )

    files = final_members(read_image(image))

    hook = files["usr/lib/bootkit/bootkit-prepare-root"]
    assert hook.data == (MODULE / "bootkit-prepare-root.sh").read_bytes()
    assert hook.mode & 0o111
    unit = files["usr/lib/systemd/system/bootkit-prepare-root.service"]
    assert unit.data == (MODULE / "bootkit-prepare-root.service").read_bytes()
    wants = files["etc/systemd/system/initrd-root-fs.target.wants/bootkit-prepare-root.service"]
    assert wants.kind == "symlink" and wants.link_target.endswith("/bootkit-prepare-root.service")
    # What the hook needs, and systemd as /init to run the unit.
    for needed in ("usr/bin/mount", "usr/bin/umount", "usr/bin/mkdir", "usr/lib/systemd/systemd"):
        assert needed in files, needed
    assert files["init"].link_target == "usr/lib/systemd/systemd"
