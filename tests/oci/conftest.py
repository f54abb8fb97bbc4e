"""Fixtures of the tests of bootkit.oci."""

from __future__ import annotations

from pathlib import Path

import pytest
from ocilayouts import Built, write_image


@pytest.fixture
def source(tmp_path: Path) -> tuple[Path, Built]:
    """An OCI layout holding one image of two layers under the name "v1"."""
    layout = tmp_path / "source"
    built = write_image(layout, "v1", [{"usr/bin/a": b"a" * 5000}, {"etc/b": b"b" * 300}])
    return layout, built
