"""The harness's own pieces, without booting anything."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from bootkit_testing.harness import BootReport, menu_titles
from bootkit_testing.qemu import Machine, qemu_command, strip_terminal_codes
from bootkit_testing.testos import INIT

CONSOLE = (
    "\x1b[2J\x1b[01;01H\x1b[=3hBdsDxe: starting Boot0001\r\n"
    "\x1b[1;1H   Bootkit Test OS 2   \x1b[2;1H   Bootkit Test OS 1   \x1b[24;1HBoot in 2 s.\r\n"
    "[    5.1] EXT4-fs (vda2): mounted filesystem\r\n"
    "BOOTKIT-TEST id=2\r\n"
    "BOOTKIT-TEST bootkit=/bootkit/deploy/os/deploy/2-ab\r\n"
    "BOOTKIT-TEST mount:/usr=root=/bootkit/deploy/os/deploy/2-ab/usr options=ro,relatime\r\n"
    "BOOTKIT-TEST write:/usr=no\r\n"
    "BOOTKIT-TEST write:/var=yes\r\n"
    "BOOTKIT-TEST var-history=1 2 \r\n"
    "BOOTKIT-TEST done\r\n"
)


def test_report_reads_marker_lines() -> None:
    report = BootReport.parse(CONSOLE)
    assert report.done and report.id == "2"
    assert report.bootkit_arg == "/bootkit/deploy/os/deploy/2-ab"
    usr = report.mount("/usr")
    assert usr is not None and usr.read_only and usr.root.endswith("/2-ab/usr")
    assert report.mount("/var") is None
    assert report.writable("/usr") is False and report.writable("/var") is True
    assert report.writable("/etc") is None
    assert report.history("var") == ["1", "2"] and report.history("etc") == []


def test_unfinished_report_is_not_done() -> None:
    assert not BootReport.parse(CONSOLE.replace("BOOTKIT-TEST done", "")).done


def test_menu_titles_in_drawing_order() -> None:
    titles = ["Bootkit Test OS 1", "Bootkit Test OS 2", "Bootkit Test OS 3"]
    assert menu_titles(CONSOLE, titles) == ["Bootkit Test OS 2", "Bootkit Test OS 1"]
    assert "\x1b" not in strip_terminal_codes(CONSOLE)


def test_qemu_command_uses_tcg_unless_asked(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("BOOTKIT_QEMU_ACCEL", raising=False)
    argv = qemu_command(Machine(Path("/img")), Path("/vars.fd"))
    assert argv[argv.index("-accel") + 1] == "tcg"
    assert "-no-reboot" in argv and "q35" in argv
    assert any("readonly=on" in a and "OVMF_CODE" in a for a in argv)
    assert "if=pflash,format=raw,unit=1,file=/vars.fd" in argv
    monkeypatch.setenv("BOOTKIT_QEMU_ACCEL", "kvm")
    argv = qemu_command(Machine(Path("/img")), Path("/vars.fd"))
    assert argv[argv.index("-accel") + 1] == "kvm"


@pytest.mark.skipif(shutil.which("shellcheck") is None, reason="shellcheck not installed")
def test_test_os_init_passes_shellcheck(tmp_path: Path) -> None:
    script = tmp_path / "init"
    script.write_text(INIT)
    proc = subprocess.run(["shellcheck", "-s", "sh", str(script)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout
