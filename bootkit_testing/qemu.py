"""Booting disk images under QEMU with UEFI firmware, and reading the serial console.

The command line is assembled from small named pieces (machine, firmware,
disk, console). The serial console is QEMU's stdio: a thread copies it into a
log file and a buffer that `wait_for` searches, and keys for the boot menu are
written to QEMU's stdin. A `VirtualMachine` is a context manager: whatever
happens, QEMU is stopped when the block ends.

KVM is used only when BOOTKIT_QEMU_ACCEL=kvm; TCG is the default because
KVM guests hang on some hosts.

What a booted guest reports, and the disk images it boots from, are in
bootkit_testing.harness.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

OVMF_CODE = Path("/usr/share/OVMF/OVMF_CODE_4M.fd")
OVMF_VARS = Path("/usr/share/OVMF/OVMF_VARS_4M.fd")
QEMU = "qemu-system-x86_64"
BOOT_TIMEOUT = float(os.environ.get("BOOTKIT_BOOT_TIMEOUT", "180"))

_ANSI = re.compile(r"\x1b(?:\[[0-9;?=]*[ -/]*[@-~]|[()][0-9A-Za-z]|[=>78cDEHM])")


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
    # A TPM 2.0 (CRB interface): the control socket of a running swtpm (bootkit_testing.tpm).
    tpm_socket: Path | None = None


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


def tpm_args(sock: Path | None) -> list[str]:
    if sock is None:
        return []
    return [
        "-chardev", f"socket,id=chrtpm,path={sock}",
        "-tpmdev", "emulator,id=tpm0,chardev=chrtpm",
        "-device", "tpm-crb,tpmdev=tpm0",
    ]


def console_args() -> list[str]:
    return ["-serial", "stdio", "-monitor", "none"]


def qemu_command(m: Machine, vars_copy: Path) -> list[str]:
    return [
        QEMU,
        *machine_args(m),
        *firmware_args(m.firmware_code, vars_copy),
        *disk_args(m.image),
        *tpm_args(m.tpm_socket),
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
