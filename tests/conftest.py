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
