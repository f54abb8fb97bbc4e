"""Fixtures of the image tests: a small OCI layout, a registry on 127.0.0.1 and a key
it trusts.

Each test gets its own of both: a registry starts in a few hundredths of a second and
a key takes about as long, and a test's pushes and byte counts stay its own.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from bootkit_testing.imagetrust import ImageTrust
from bootkit_testing.oci import Built, write_image
from bootkit_testing.registry import Registry, registry_program


def _need(*programs: str) -> None:
    missing = [p for p in programs if shutil.which(p) is None]
    if missing:
        pytest.skip(f"{', '.join(missing)} not installed (scripts/setup installs them)")


@pytest.fixture
def registry(tmp_path: Path) -> Iterator[Registry]:
    """A running docker-registry for this test alone (see bootkit_testing.registry)."""
    _need("skopeo", registry_program())
    with Registry(tmp_path / "registry") as running:
        yield running


@pytest.fixture
def registry_environ(registry: Registry, monkeypatch: pytest.MonkeyPatch) -> Registry:
    """`registry`, with its `env` set in this process's environment too: for tests that
    run bootkit (and so skopeo) in-process rather than as a subprocess."""
    for name, value in registry.env.items():
        monkeypatch.setenv(name, value)
    return registry


@pytest.fixture
def image_trust(registry: Registry, tmp_path: Path) -> Iterator[ImageTrust]:
    """A throwaway key, and a policy for `registry` that requires its signature."""
    _need("gpg", "gpgconf")
    with ImageTrust(tmp_path / "trust", registry.host) as trust:
        yield trust


@pytest.fixture
def source(tmp_path: Path) -> tuple[Path, Built]:
    """An OCI layout holding one image of two layers under the name "v1"."""
    layout = tmp_path / "source"
    built = write_image(layout, "v1", [{"usr/bin/a": b"a" * 5000}, {"etc/b": b"b" * 300}])
    return layout, built
