"""Fixtures shared by the whole test suite."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

_CACHED_KERNEL = Path(__file__).resolve().parents[1] / ".cache" / "kernel" / "root"


@pytest.fixture(scope="session")
def test_kernel() -> Path:
    """A dpkg -x'ed Debian kernel package (boot/vmlinuz-<kver>, lib/modules/<kver>/)."""
    env = os.environ.get("BOOTKIT_TEST_KERNEL_DIR")
    if env:
        return Path(env)
    if _CACHED_KERNEL.is_dir():
        return _CACHED_KERNEL
    pytest.skip("no test kernel: set BOOTKIT_TEST_KERNEL_DIR or run scripts/fetch-kernel")


@pytest.fixture(autouse=True)
def run_dir(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Path:
    """bootkit's run directory (staged deployments' records) for this test alone, never
    the host's /run/bootkit."""
    from bootkit import contract

    path = tmp_path_factory.mktemp("run") / "bootkit"
    monkeypatch.setattr(contract, "RUN_DIR", path)
    return path
