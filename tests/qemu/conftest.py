"""Fixtures for the boot tests: the kernel, the test OS trees, and console logs on failure."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from bootkit_testing import qemu
from bootkit_testing.kernel import KernelTree, KernelUnavailable, ensure_kernel
from bootkit_testing.testos import build_testos

TESTOS_VERSIONS = ("1", "2")
# The test modules that boot the Debian tree, and the derived base each needs besides it.
DEBIAN_MODULES = {"test_debian.py": None, "test_oci.py": "containers", "test_measured.py": "crypt"}


def _build_debian_bases(derived: set[str]) -> None:
    """Build the cached Debian bases the selected tests need, or do nothing if they are
    there. Errors are left to the tests' own fixtures, which build again and say why."""
    from bootkit_testing import debian
    from bootkit_testing.debian.containers import ensure_containers_base
    from bootkit_testing.debian.crypt import ensure_crypt_base

    builders: dict[str, Callable[[Path, KernelTree], Path]] = {
        "containers": lambda base, kernel: ensure_containers_base(base),
        "crypt": ensure_crypt_base,
    }
    try:
        if qemu.missing_prerequisites() or debian.missing_prerequisites():
            return
        kernel = ensure_kernel()
        base = debian.ensure_base(kernel)
        for name in sorted(derived):
            builders[name](base, kernel)
    except Exception:  # the fixtures that need the bases build again and report it
        logging.getLogger(__name__).debug("building the Debian bases ahead failed", exc_info=True)


def pytest_collection_finish(session: pytest.Session) -> None:
    """Start building the Debian bases while the tests before the Debian boots run.

    Building them (debootstrap, dpkg, dracut) takes minutes on one core, mostly while
    the fast tests and the test OS's boots leave the other core idle. The fixtures
    that need a base wait on the cache's lock until it is there.
    """
    modules = {Path(str(item.fspath)).name for item in session.items}
    wanted = modules & DEBIAN_MODULES.keys()
    if wanted:
        derived = {d for m in wanted if (d := DEBIAN_MODULES[m]) is not None}
        threading.Thread(target=_build_debian_bases, args=(derived,), name="debian-bases",
                         daemon=True).start()


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
