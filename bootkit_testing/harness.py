"""Booting the test OS: what the guest reports, bootkit disk images under test, the boot menu.

A boot runs on bootkit_testing.qemu's VirtualMachine; the test OS
(bootkit_testing.testos, or the Debian tree of bootkit_testing.debian) reports
on the serial console, one `BOOTKIT-TEST key=value` line per finding, and
`BootReport` reads those lines back.

Choosing a boot menu entry works as a person does it: the harness waits until
the bootloader shows its menu countdown on the serial console, then presses
"down" (`j` in systemd-boot, Ctrl-N in GRUB) and Enter. So a test exercises the
menu as built from bootkit's entries, in bootkit's order, with nothing changed
on the disk; the image only needs a menu timeout (MENU_TIMEOUT) for the keys
to arrive in.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .qemu import BOOT_TIMEOUT, BootFailure, Machine, VirtualMachine, log_tail, strip_terminal_codes
from .testos import MARKER

# Keys that move the boot menu highlight down one entry, per bootloader.
# Single bytes: the UART is read by the firmware and by GRUB, and an escape
# sequence split between the two would be garbage.
MENU_DOWN = {"systemd-boot": b"j", "grub": b"\x0e"}  # grub: Ctrl-N
MENU_SELECT = b"\r"
# Text each bootloader shows under its menu while the timeout runs.
MENU_SHOWN = {
    "systemd-boot": re.compile(r"Boot in \d+ s"),
    "grub": re.compile(r"will be (?:executed|booted) automatically"),
}

_MARKER_LINE = re.compile(rf"{MARKER} ([^=\s]+)(?:=(.*))?")


# --- what the test OS reports -----------------------------------------------------------


@dataclass(frozen=True)
class Mount:
    root: str  # the subtree of the filesystem mounted there
    options: tuple[str, ...]

    @property
    def read_only(self) -> bool:
        return "ro" in self.options


@dataclass(frozen=True)
class BootReport:
    """The `BOOTKIT-TEST key=value` lines of one boot; the last value of a key wins."""

    values: dict[str, str]
    console: str
    seconds: float

    @classmethod
    def parse(cls, console: str, seconds: float = 0.0) -> BootReport:
        values = {}
        for line in strip_terminal_codes(console).splitlines():
            m = _MARKER_LINE.search(line)
            if m:
                values[m.group(1)] = (m.group(2) or "").strip()
        return cls(values, console, seconds)

    @property
    def done(self) -> bool:
        return "done" in self.values

    @property
    def id(self) -> str | None:
        return self.values.get("id")

    @property
    def bootkit_arg(self) -> str | None:
        return self.values.get("bootkit")

    def mount(self, path: str) -> Mount | None:
        value = self.values.get(f"mount:{path}")
        if value is None:
            return None
        m = re.fullmatch(r"root=(\S+) options=(\S+)", value)
        if not m:
            return None
        return Mount(m.group(1), tuple(m.group(2).split(",")))

    def writable(self, path: str) -> bool | None:
        value = self.values.get(f"write:{path}")
        return None if value is None else value == "yes"

    def history(self, which: str) -> list[str]:
        return self.values.get(f"{which}-history", "").split()


# --- one boot -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Run:
    """One boot from power-on to power-off: the console and how long it took."""

    console: str
    seconds: float
    exit_code: int
    log: Path

    @property
    def text(self) -> str:
        return strip_terminal_codes(self.console)


def run_until_poweroff(
    image: Path,
    workdir: Path,
    name: str,
    bootloader: str,
    menu_downs: int = 0,
    timeout: float = BOOT_TIMEOUT,
) -> Run:
    """Boot `image` until the guest powers off; pick the entry `menu_downs` below the default."""
    with VirtualMachine(Machine(image), workdir, name) as vm:
        if menu_downs:
            vm.wait_for(MENU_SHOWN[bootloader], timeout)
            vm.send(MENU_DOWN[bootloader] * menu_downs)
            vm.send(MENU_SELECT)
        code = vm.wait_exit(timeout)
        return Run(vm.console(), vm.elapsed, code, vm.log_path)


def boot(
    image: Path,
    workdir: Path,
    name: str,
    bootloader: str,
    menu_downs: int = 0,
    timeout: float = BOOT_TIMEOUT,
) -> BootReport:
    """Boot the test OS on `image` and return its report; fail unless the report is complete."""
    run = run_until_poweroff(image, workdir, name, bootloader, menu_downs, timeout)
    report = BootReport.parse(run.console, run.seconds)
    if not report.done:
        raise BootFailure(
            "the guest powered off without the test OS finishing its report\n"
            f"--- last lines of the console ({run.log}) ---\n{log_tail(run.log)}"
        )
    return report


def menu_titles(console: str, titles: Sequence[str]) -> list[str]:
    """`titles` in the order the bootloader first drew them on the console."""
    text = strip_terminal_codes(console)
    found = [(text.find(t), t) for t in titles if t in text]
    return [t for _, t in sorted(found)]


# --- a disk image under test -----------------------------------------------------------------

# console=ttyS0: the guest reports on the serial console; poweroff on failure and
# panic=-1 (reboot, which -no-reboot turns into QEMU exiting) end a failed boot at once.
TEST_KARGS = ("console=ttyS0", "bootkit.poweroff_on_failure=1", "panic=-1")
# Short, but long enough for the harness to see the menu and press a key.
MENU_TIMEOUT = 2


def bootkit_command() -> list[str]:
    script = Path(sys.executable).with_name("bootkit")
    if script.is_file():
        return [str(script)]
    return [sys.executable, "-c", "import sys; from bootkit.cli import main; sys.exit(main())"]


class Disk:
    """A bootkit disk image, changed with `bootkit image ...` and booted under QEMU."""

    def __init__(self, image: Path, bootloader: str, workdir: Path) -> None:
        self.image = image
        self.bootloader = bootloader
        self.workdir = workdir
        self.boots: list[float] = []

    def bootkit(self, *args: str | Path) -> str:
        """Run `bootkit image <args>` on this image; return its stdout, fail with its stderr."""
        argv = [*bootkit_command(), "image", *map(str, args)]
        proc = subprocess.run(argv, capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            raise AssertionError(
                f"{' '.join(argv)} failed with status {proc.returncode}:\n{proc.stderr}{proc.stdout}"
            )
        return proc.stdout

    def create(self, sources: Sequence[Path], size: str = "512M") -> None:
        kargs = [f"--karg={k}" for k in TEST_KARGS]
        self.bootkit("create", self.image, *sources, "--size", size, "--esp-size", "128M",
                     "--bootloader", self.bootloader, "--timeout", str(MENU_TIMEOUT),
                     "--force", *kargs)

    def status(self) -> list[dict[str, Any]]:
        deployments: list[dict[str, Any]] = json.loads(
            self.bootkit("status", self.image, "--json"))["deployments"]
        return deployments

    def _name(self) -> str:
        return f"{self.bootloader}-boot{len(self.boots) + 1}"

    def boot(self, menu_downs: int = 0) -> BootReport:
        report = boot(self.image, self.workdir, self._name(), self.bootloader, menu_downs)
        self.boots.append(report.seconds)
        return report

    def boot_to_poweroff(self) -> Run:
        run = run_until_poweroff(self.image, self.workdir, self._name(), self.bootloader)
        self.boots.append(run.seconds)
        return run
