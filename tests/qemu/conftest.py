"""Fixtures for the boot tests: the kernel, the test OS trees, and console logs on failure."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from bootkit_testing import qemu
from bootkit_testing.kernel import KernelTree, KernelUnavailable, ensure_kernel
from bootkit_testing.testos import build_testos

TESTOS_VERSIONS = ("1", "2")


@pytest.fixture(scope="session")
def boot_kernel() -> KernelTree:
    missing = qemu.missing_prerequisites()
    if missing:
        pytest.skip(f"cannot boot images here, missing: {', '.join(missing)}")
    try:
        return ensure_kernel()
    except KernelUnavailable as err:
        pytest.skip(str(err))


@pytest.fixture(scope="session")
def testos_trees(boot_kernel: KernelTree, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Test OS trees by version; each reports its version as `id` when booted."""
    base = tmp_path_factory.mktemp("testos")
    return {v: build_testos(base / f"v{v}", boot_kernel, v) for v in TESTOS_VERSIONS}


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Iterator[None]:
    item.stash[_FIRST_LOG] = len(qemu.CONSOLE_LOGS)
    yield


_FIRST_LOG = pytest.StashKey[int]()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    outcome = yield
    report = outcome.get_result()
    if report.when != "call" or not report.failed:
        return
    # A boot failure says why in its message; for a failed assertion on what the
    # guest reported, the console of each VM this test ran is the evidence.
    for log in qemu.CONSOLE_LOGS[item.stash.get(_FIRST_LOG, 0):]:
        report.sections.append((f"console {log.name} (last lines)", qemu.log_tail(log)))
