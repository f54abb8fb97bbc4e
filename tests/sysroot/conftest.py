"""Fixtures of the fsck tests: a populated sysroot per bootloader, and fresh copies to damage.

Test files that need a sysroot of another kind define their own `sysroot` fixture,
which takes precedence over this one.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from support.damage import copy_of, populated_sysroot

from bootkit.sysroot.layout import Sysroot


@pytest.fixture(scope="module", params=["systemd-boot", "grub"])
def template(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A populated sysroot per bootloader, made once a module; tests damage copies of it."""
    return populated_sysroot(tmp_path_factory.mktemp(f"fsck-{request.param}"), request.param)


@pytest.fixture
def sysroot(template: Path, tmp_path: Path) -> Path:
    return copy_of(template, tmp_path / "sys")


@pytest.fixture
def sr(sysroot: Path) -> Sysroot:
    return Sysroot(sysroot)
