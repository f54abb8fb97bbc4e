"""Booting disk images under QEMU with UEFI firmware, and reading what the guest reports.

The command line is assembled from small named pieces (machine, firmware,
disk, console). The serial console is QEMU's stdio: a thread copies it into a
log file and a buffer that `wait_for` searches, and keys for the boot menu are
written to QEMU's stdin. A `VirtualMachine` is a context manager: whatever
happens, QEMU is stopped when the block ends.

KVM is used only when BOOTKIT_QEMU_ACCEL=kvm; TCG is the default because
KVM guests hang on some hosts.

Choosing a boot menu entry works as a person does it: the harness waits until
the bootloader shows its menu countdown on the serial console, then presses
"down" (`j` in systemd-boot, Ctrl-N in GRUB) and Enter. So a test exercises the
menu as built from bootkit's entries, in bootkit's order, with nothing changed
on the disk; the image only needs a menu timeout (MENU_TIMEOUT) for the keys
to arrive in.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from .testos import MARKER

OVMF_CODE = Path("/usr/share/OVMF/OVMF_CODE_4M.fd")
OVMF_VARS = Path("/usr/share/OVMF/OVMF_VARS_4M.fd")
QEMU = "qemu-system-x86_64"
BOOT_TIMEOUT = float(os.environ.get("BOOTKIT_BOOT_TIMEOUT", "180"))

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

_ANSI = re.compile(r"\x1b(?:\[[0-9;?=]*[ -/]*[@-~]|[()][0-9A-Za-z]|[=>78cDEHM])")
_MARKER_LINE = re.compile(rf"{MARKER} ([^=\s]+)(?:=(.*))?")


# Every console log written in this process, oldest first (test reports attach them).
CONSOLE_LOGS: list[Path] = []


class BootFailure(AssertionError):
    """The guest did not get where it should; the message ends with the console's tail."""


def default_accel() -> str:
    return os.environ.get("BOOTKIT_QEMU_ACCEL", "tcg")


def missing_prerequisites() -> list[str]:
    """What this machine lacks to boot images (empty when everything is there)."""
    missing = []
    if shutil.which(QEMU) is None:
        missing.append(f"{QEMU} (package qemu-system-x86)")
    for path in (OVMF_CODE, OVMF_VARS):
        if not path.is_file():
            missing.append(f"{path} (package ovmf)")
    return missing


@dataclass(frozen=True)
class Machine:
    """What to boot and on what: the parts of the QEMU command line."""

    image: Path
    memory_mib: int = 1024
    accel: str = field(default_factory=default_accel)
    firmware_code: Path = OVMF_CODE
    firmware_vars: Path = OVMF_VARS
    # Secure Boot firmware (e.g. OVMF_CODE_4M.secboot.fd) keeps its variables in
    # SMM-protected flash; without these flags it does not start.
    secure_boot: bool = False


def machine_args(m: Machine) -> list[str]:
    secure = ["-global", "driver=cfi.pflash01,property=secure,value=on"] if m.secure_boot else []
    return [
        "-machine", "q35,smm=on" if m.secure_boot else "q35",
        *secure,
        "-accel", m.accel,
        "-m", str(m.memory_mib),
        "-smp", "1",
        # Only the devices listed here: no network card for the firmware to try
        # PXE on, no display.
        "-nodefaults",
        "-display", "none",
        "-no-reboot",
    ]


def firmware_args(code: Path, vars_copy: Path) -> list[str]:
    return [
        "-drive", f"if=pflash,format=raw,unit=0,readonly=on,file={code}",
        "-drive", f"if=pflash,format=raw,unit=1,file={vars_copy}",
    ]


def disk_args(image: Path) -> list[str]:
    return [
        "-drive", f"if=none,id=disk0,format=raw,file={image}",
        "-device", "virtio-blk-pci,drive=disk0,bootindex=1",
    ]


def console_args() -> list[str]:
    return ["-serial", "stdio", "-monitor", "none"]


def qemu_command(m: Machine, vars_copy: Path) -> list[str]:
    return [
        QEMU,
        *machine_args(m),
        *firmware_args(m.firmware_code, vars_copy),
        *disk_args(m.image),
        *console_args(),
    ]


def strip_terminal_codes(text: str) -> str:
    return _ANSI.sub("", text).replace("\r", "")


def log_tail(log: Path, lines: int = 60) -> str:
    try:
        text = log.read_bytes().decode("utf-8", errors="replace")
    except OSError as err:
        return f"(cannot read {log}: {err})"
    return "\n".join(strip_terminal_codes(text).splitlines()[-lines:])


class VirtualMachine:
    """One QEMU run; use as a context manager."""

    def __init__(self, machine: Machine, workdir: Path, name: str = "vm") -> None:
        self.machine = machine
        self.workdir = workdir
        self.name = name
        self.log_path = workdir / f"{name}.console.log"
        self._vars = workdir / f"{name}.OVMF_VARS.fd"
        self._buffer = bytearray()
        self._cond = threading.Condition()
        self._proc: subprocess.Popen[bytes] | None = None
        self._reader: threading.Thread | None = None
        self._cursor = 0
        self.started = 0.0
        self.elapsed = 0.0

    # --- lifecycle --------------------------------------------------------------

    def __enter__(self) -> VirtualMachine:
        self.workdir.mkdir(parents=True, exist_ok=True)
        CONSOLE_LOGS.append(self.log_path)
        # Fresh variables per run: no boot entries or one-shot choices carried over.
        shutil.copyfile(self.machine.firmware_vars, self._vars)
        self.started = time.monotonic()
        self._proc = subprocess.Popen(
            qemu_command(self.machine, self._vars),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        self._reader = threading.Thread(target=self._read_console, daemon=True)
        self._reader.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        proc = self._proc
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if self._reader is not None:
            self._reader.join(timeout=10)
        if proc is not None and proc.stdin is not None:
            proc.stdin.close()
        if self.started and not self.elapsed:
            self.elapsed = time.monotonic() - self.started

    def _read_console(self) -> None:
        assert self._proc is not None and self._proc.stdout is not None
        fd = self._proc.stdout.fileno()
        with open(self.log_path, "wb") as log:
            while chunk := os.read(fd, 65536):
                log.write(chunk)
                log.flush()
                with self._cond:
                    self._buffer += chunk
                    self._cond.notify_all()
        with self._cond:
            self._cond.notify_all()

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    # --- the console ------------------------------------------------------------

    def console(self) -> str:
        with self._cond:
            return bytes(self._buffer).decode("utf-8", errors="replace")

    def tail(self, lines: int = 60) -> str:
        return "\n".join(strip_terminal_codes(self.console()).splitlines()[-lines:])

    def fail(self, message: str) -> BootFailure:
        return BootFailure(
            f"{message}\n--- last lines of the console ({self.log_path}) ---\n{self.tail()}"
        )

    def wait_for(self, pattern: re.Pattern[str] | str, timeout: float = BOOT_TIMEOUT) -> re.Match[str]:
        """Wait until `pattern` appears on the console after the previous match."""
        regex = re.compile(pattern) if isinstance(pattern, str) else pattern
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                text = strip_terminal_codes(bytes(self._buffer).decode("utf-8", errors="replace"))
                m = regex.search(text, self._cursor)
                if m:
                    self._cursor = m.end()
                    return m
                if not self.running and (self._reader is None or not self._reader.is_alive()):
                    raise self.fail(f"QEMU exited before the console showed {regex.pattern!r}")
                left = deadline - time.monotonic()
                if left <= 0:
                    raise self.fail(f"timed out after {timeout:.0f} s waiting for {regex.pattern!r}")
                self._cond.wait(min(left, 1.0))

    def send(self, keys: bytes) -> None:
        assert self._proc is not None and self._proc.stdin is not None
        self._proc.stdin.write(keys)
        self._proc.stdin.flush()

    def wait_exit(self, timeout: float = BOOT_TIMEOUT) -> int:
        assert self._proc is not None
        try:
            code = self._proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            raise self.fail(f"the guest did not power off within {timeout:.0f} s") from None
        self.elapsed = time.monotonic() - self.started
        if self._reader is not None:
            self._reader.join(timeout=10)
        return code


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

    def status(self) -> list[dict]:
        return json.loads(self.bootkit("status", self.image, "--json"))["deployments"]

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
