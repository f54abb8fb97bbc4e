"""A software TPM 2.0 on 127.0.0.1 for host tools (systemd-measure, systemd-cryptenroll)."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest


def missing() -> str | None:
    """Why no swtpm can be used here, or None."""
    if shutil.which("swtpm") is None:
        return "swtpm is not installed (scripts/setup installs it)"
    if not list(Path("/usr/lib").glob("*/libtss2-tcti-swtpm.so*")):
        return "libtss2-tcti-swtpm0 is not installed (scripts/setup installs it)"
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _listening(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    except OSError:
        return False
    return True


@contextmanager
def running(state: Path) -> Iterator[str]:
    """A swtpm keeping its state in `state`; yields the TCTI string systemd takes."""
    if reason := missing():
        pytest.skip(reason)
    state.mkdir(parents=True, exist_ok=True)
    for _ in range(5):  # a port picked free may be taken before swtpm binds it
        port = _free_port()
        proc = subprocess.Popen(
            ["swtpm", "socket", "--tpm2", "--tpmstate", f"dir={state}",
             "--server", f"type=tcp,port={port},bindaddr=127.0.0.1",
             "--ctrl", f"type=tcp,port={port + 1},bindaddr=127.0.0.1",
             "--flags", "not-need-init,startup-clear"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while proc.poll() is None and not _listening(port) and time.monotonic() < deadline:
            time.sleep(0.05)
        if proc.poll() is None:
            break
    else:
        pytest.fail("swtpm did not start")
    try:
        yield f"swtpm:host=127.0.0.1,port={port}"
    finally:
        proc.terminate()
        proc.wait(10)
