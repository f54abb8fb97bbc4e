"""A software TPM 2.0 (swtpm) whose state lives in a directory: one TPM across several runs.

The same state serves the host, which enrols a LUKS2 volume with systemd-cryptenroll
through tpm2-tss's swtpm TCTI (TCP on 127.0.0.1), and then each boot of the guest,
for which QEMU's TPM emulator backend talks to swtpm over a Unix socket (the control
channel; the TPM commands go through it as well). The TPM's seeds are made the first
time swtpm starts on an empty directory and kept there, so what the host sealed
the guest unseals.
"""

from __future__ import annotations

import contextlib
import shutil
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

SWTPM = "swtpm"
# What a test needs besides QEMU, and the Debian packages that provide it.
PROGRAMS = {
    "swtpm": "swtpm",
    "systemd-cryptenroll": "systemd",
    "cryptsetup": "cryptsetup-bin",
    "resize2fs": "e2fsprogs",
}
TCTI_LIBRARY = "libtss2-tcti-swtpm.so.0"  # package libtss2-tcti-swtpm0
_START_TIMEOUT = 10.0


class TpmUnavailable(Exception):
    """swtpm did not come up; the message says why."""


def missing_prerequisites() -> list[str]:
    missing = [f"{program} (package {package})" for program, package in PROGRAMS.items()
               if shutil.which(program) is None and shutil.which(program, path="/usr/sbin:/sbin")
               is None]
    if not any(Path(d, TCTI_LIBRARY).exists() for d in ("/usr/lib/x86_64-linux-gnu", "/usr/lib")):
        missing.append(f"{TCTI_LIBRARY} (package libtss2-tcti-swtpm0)")
    return missing


def _free_port_pair() -> int:
    """A port P on 127.0.0.1 such that P and P+1 are free (swtpm's TCTI uses both)."""
    for _ in range(50):
        with socket.socket() as first:
            first.bind(("127.0.0.1", 0))
            port = first.getsockname()[1]
            with socket.socket() as second:
                try:
                    second.bind(("127.0.0.1", port + 1))
                except OSError:
                    continue
        return int(port)
    raise TpmUnavailable("found no two free consecutive ports on 127.0.0.1")


def _wait(proc: subprocess.Popen[bytes], ready: Callable[[], bool], log: Path) -> None:
    deadline = time.monotonic() + _START_TIMEOUT
    while True:
        if proc.poll() is not None:
            raise TpmUnavailable(f"swtpm exited with status {proc.returncode}: "
                                 f"{log.read_text(errors='replace').strip()[-2000:]}")
        if ready():
            return
        if time.monotonic() > deadline:
            raise TpmUnavailable(f"swtpm did not come up within {_START_TIMEOUT:.0f} s")
        time.sleep(0.05)


def _connects(port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
        return True
    return False


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _command(state: Path, log: Path) -> list[str]:
    state.mkdir(parents=True, exist_ok=True)
    return [SWTPM, "socket", "--tpm2", "--tpmstate", f"dir={state}", "--log", f"file={log}"]


@contextlib.contextmanager
def tcti(state: Path, log: Path) -> Iterator[str]:
    """swtpm on 127.0.0.1 for the host's tools; yields the TCTI string that names it
    (`--tpm2-device=` of systemd-cryptenroll)."""
    port = _free_port_pair()
    proc = subprocess.Popen(
        [*_command(state, log),
         "--server", f"type=tcp,port={port},bindaddr=127.0.0.1",
         "--ctrl", f"type=tcp,port={port + 1},bindaddr=127.0.0.1",
         # Powered on and started up: the tools begin with TPM commands.
         "--flags", "not-need-init,startup-clear"],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        _wait(proc, lambda: _connects(port), log)
        yield f"swtpm:host=127.0.0.1,port={port}"
    finally:
        _stop(proc)


@contextlib.contextmanager
def for_qemu(state: Path, sock: Path, log: Path) -> Iterator[Path]:
    """swtpm for one run of QEMU (`qemu.Machine.tpm_socket`): it ends when QEMU disconnects."""
    sock.unlink(missing_ok=True)
    proc = subprocess.Popen(
        [*_command(state, log), "--ctrl", f"type=unixio,path={sock}", "--terminate"],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        _wait(proc, sock.exists, log)
        yield sock
    finally:
        _stop(proc)
        sock.unlink(missing_ok=True)
