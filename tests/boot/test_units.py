"""bootkit's systemd units in an OS tree: bootkit-mark-good.service and the bless-boot drop-in."""

from __future__ import annotations

import configparser
import shutil
import subprocess
from pathlib import Path

import pytest
from click.testing import CliRunner

from bootkit.boot.units import install_units
from bootkit.cli import main
from bootkit.errors import BootkitError

REPO = Path(__file__).resolve().parents[2]
UNITS = Path("usr/lib/systemd/system")


def _ini(path: Path) -> configparser.ConfigParser:
    parser = configparser.ConfigParser(interpolation=None, strict=False)
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read_string(path.read_text())
    return parser


def test_installs_and_enables_the_unit_in_usr(tmp_path: Path) -> None:
    done = install_units(tmp_path)

    unit = tmp_path / UNITS / "bootkit-mark-good.service"
    assert done.unit == unit
    assert unit.read_bytes() == (REPO / "bootkit/data/bootkit-mark-good.service").read_bytes()
    # Enabled the way the unit's [Install] section says, statically in /usr.
    wanted_by = _ini(unit)["Install"]["WantedBy"]
    link = tmp_path / UNITS / f"{wanted_by}.wants" / "bootkit-mark-good.service"
    assert done.enabled == link
    assert link.is_symlink() and link.resolve() == unit.resolve()
    assert not any(p.name.endswith(".bootkit-tmp") for p in tmp_path.rglob("*"))


@pytest.mark.parametrize(("boot_dir", "esp_path"), [("/efi", "/sysroot/efi"),
                                                     ("/boot/efi/", "/sysroot/boot/efi")])
def test_bless_boot_looks_for_the_esp_below_the_physical_root(
    tmp_path: Path, boot_dir: str, esp_path: str
) -> None:
    done = install_units(tmp_path, boot_dir)

    assert done.dropin == tmp_path / UNITS / "systemd-bless-boot.service.d/50-bootkit.conf"
    dropin = _ini(done.dropin)
    assert dropin["Service"]["Environment"] == f'"SYSTEMD_ESP_PATH={esp_path}"'
    # On a read-only ESP it gives way to bootkit-mark-good.service.
    assert dropin["Unit"]["ConditionPathIsReadWrite"] == esp_path


def test_the_boot_dir_cannot_add_lines_or_specifiers_to_the_dropin(tmp_path: Path) -> None:
    with pytest.raises(BootkitError, match="boot directory"):
        install_units(tmp_path, "/efi\nExecStartPre=/bin/rm -rf /")
    assert list(tmp_path.iterdir()) == []
    # A space, a quote and a % stay in the one quoted assignment, taken literally.
    done = install_units(tmp_path, '/my efi/"x"%h')
    (line,) = [x for x in done.dropin.read_text().splitlines() if x.startswith("Environment=")]
    assert line == 'Environment="SYSTEMD_ESP_PATH=/sysroot/my efi/\\"x\\"%%h"'
    (line,) = [x for x in done.dropin.read_text().splitlines() if x.startswith("Condition")]
    assert line == 'ConditionPathIsReadWrite=/sysroot/my efi/"x"%%h'


def test_installing_again_replaces_what_is_there(tmp_path: Path) -> None:
    install_units(tmp_path, "/boot")
    link = tmp_path / UNITS / "basic.target.wants/bootkit-mark-good.service"
    link.unlink()
    link.symlink_to("/dev/null")  # masked by hand, or left by an older version
    done = install_units(tmp_path, "/efi")

    assert done.enabled.readlink() == Path("../bootkit-mark-good.service")
    assert "\"SYSTEMD_ESP_PATH=/sysroot/efi\"\n" in done.dropin.read_text()


def test_the_trees_symlinks_lead_inside_the_tree(tmp_path: Path) -> None:
    host = tmp_path / "host"
    host.mkdir()
    tree = tmp_path / "tree"
    (tree / "usr/lib/systemd").mkdir(parents=True)
    (tree / UNITS).symlink_to(host)  # to the tree's own directory of that name, once booted
    own = tree / str(host).lstrip("/")
    own.mkdir(parents=True)
    done = install_units(tree)

    assert done.unit == own / "bootkit-mark-good.service" and done.unit.is_file()
    assert done.enabled.parent == own / "basic.target.wants"
    assert list(host.iterdir()) == []


def test_a_symlink_at_a_temp_name_is_not_written_through(tmp_path: Path) -> None:
    host_file = tmp_path / "host-file"
    host_file.write_text("the host's\n")
    tree = tmp_path / "tree"
    (tree / UNITS).mkdir(parents=True)
    (tree / UNITS / ".bootkit-mark-good.service.bootkit-tmp").symlink_to(host_file)
    with pytest.raises(BootkitError, match="cannot install the units"):
        install_units(tree)
    assert host_file.read_text() == "the host's\n"


@pytest.mark.parametrize("boot_dir", ["efi", "", "/"])
def test_refuses_a_boot_dir_that_is_not_below_root(tmp_path: Path, boot_dir: str) -> None:
    with pytest.raises(BootkitError, match="boot directory"):
        install_units(tmp_path, boot_dir)
    assert list(tmp_path.iterdir()) == []


def test_cli_installs_into_the_given_root(tmp_path: Path) -> None:
    result = CliRunner().invoke(main, ["systemd", "install", "--root", str(tmp_path)])

    assert result.exit_code == 0, result.output
    assert (tmp_path / UNITS / "bootkit-mark-good.service").is_file()
    assert "basic.target.wants" in result.output


def test_cli_says_what_is_wrong_with_the_root(tmp_path: Path) -> None:
    result = CliRunner().invoke(main, ["systemd", "install", "--root", str(tmp_path / "missing")])

    assert result.exit_code == 1
    assert "is not a directory" in result.output


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze not installed")
def test_systemd_accepts_the_unit(tmp_path: Path) -> None:
    (tmp_path / "tree").mkdir()
    done = install_units(tmp_path / "tree")
    # verify also wants ExecStart's program on this machine, which need not have
    # bootkit installed: a copy runs /bin/true instead.
    unit = tmp_path / done.unit.name
    text = done.unit.read_text()
    assert "ExecStart=/usr/bin/bootkit mark-good\n" in text
    unit.write_text(text.replace("/usr/bin/bootkit mark-good", "/bin/true"))
    proc = subprocess.run(
        ["systemd-analyze", "verify", "--man=no", str(unit)],
        capture_output=True, text=True, check=False,
    )
    # Only the unit's own lines: the host's other units are not this test's business.
    own = [line for line in proc.stderr.splitlines() if unit.name in line]
    assert own == [], proc.stderr


# --- finalizing staged deployments ---------------------------------------------------------

FINALIZE = "bootkit-finalize-staged.service"
FAILED = "bootkit-finalize-failed.service"


def test_installs_and_enables_the_finalize_units(tmp_path: Path) -> None:
    done = install_units(tmp_path, "/boot/efi")

    assert [unit.name for unit, _, _ in done.finalize] == [FINALIZE, FAILED]
    for unit, enabled, dropin in done.finalize:
        assert unit == tmp_path / UNITS / unit.name
        assert unit.read_bytes() == (REPO / "bootkit/data" / unit.name).read_bytes()
        wanted_by = _ini(unit)["Install"]["WantedBy"]
        assert wanted_by == "multi-user.target"
        assert enabled == tmp_path / UNITS / f"{wanted_by}.wants" / unit.name
        assert enabled.readlink() == Path(f"../{unit.name}")
        # $BOOT stays mounted for it: its mount point below the physical root.
        assert dropin == tmp_path / UNITS / f"{unit.name}.d/50-bootkit-boot.conf"
        assert _ini(dropin)["Unit"]["RequiresMountsFor"] == '"/sysroot/boot/efi"'


def test_the_finalize_unit_runs_at_boot_and_finalizes_at_shutdown(tmp_path: Path) -> None:
    unit = _ini(REPO / "bootkit/data" / FINALIZE)
    assert unit["Unit"]["DefaultDependencies"] == "no"
    assert unit["Unit"]["After"].split() == ["local-fs.target"]
    assert "/sysroot" in unit["Unit"]["RequiresMountsFor"].split()
    assert unit["Unit"]["Conflicts"] == unit["Unit"]["Before"] == "final.target"
    assert unit["Unit"]["ConditionKernelCommandLine"] == "bootkit"
    service = unit["Service"]
    assert (service["Type"], service["RemainAfterExit"]) == ("oneshot", "yes")
    assert service["ExecStart"] == "-/usr/bin/bootkit finalize-staged --boot"
    assert service["ExecStop"] == "/usr/bin/bootkit finalize-staged"
    assert service["TimeoutStopSec"] == "15min"


def test_the_failed_unit_checks_after_the_finalize_unit(tmp_path: Path) -> None:
    unit = _ini(REPO / "bootkit/data" / FAILED)
    assert {"local-fs.target", FINALIZE} <= set(unit["Unit"]["After"].split())
    assert unit["Unit"]["ConditionKernelCommandLine"] == "bootkit"
    service = unit["Service"]
    assert (service["Type"], service["RemainAfterExit"]) == ("oneshot", "yes")
    # No '-': a recorded failure fails the unit, for 'systemctl --failed' to show.
    assert service["ExecStart"] == "/usr/bin/bootkit finalize-staged --check"


def test_the_boot_dir_cannot_add_lines_to_the_finalize_dropins(tmp_path: Path) -> None:
    done = install_units(tmp_path, '/my efi/"x"%h')
    for _, _, dropin in done.finalize:
        (line,) = [x for x in dropin.read_text().splitlines() if x.startswith("RequiresMountsFor=")]
        assert line == 'RequiresMountsFor="/sysroot/my efi/\\"x\\"%%h"'


def test_cli_names_the_finalize_units(tmp_path: Path) -> None:
    result = CliRunner().invoke(main, ["systemd", "install", "--root", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert FINALIZE in result.output and FAILED in result.output
    assert "multi-user.target.wants" in result.output


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze not installed")
@pytest.mark.parametrize("name", [FINALIZE, FAILED])
def test_systemd_accepts_the_finalize_units(tmp_path: Path, name: str) -> None:
    text = (REPO / "bootkit/data" / name).read_text()
    unit = tmp_path / name
    unit.write_text(text.replace("/usr/bin/bootkit", "/bin/true"))
    proc = subprocess.run(
        ["systemd-analyze", "verify", "--man=no", str(unit)],
        capture_output=True, text=True, check=False,
    )
    own = [line for line in proc.stderr.splitlines() if name in line]
    assert own == [], proc.stderr
