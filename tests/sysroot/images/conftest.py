"""Fixtures of the image tests: an image layout and a content store, both empty, and
images written into that layout (see imagetrees)."""

from __future__ import annotations

from pathlib import Path

import pytest
from imagetrees import Images

from bootkit.oci.layout import ImageLayout
from bootkit.sysroot.store import ObjectStore


@pytest.fixture
def layout(tmp_path: Path) -> ImageLayout:
    layout = ImageLayout(tmp_path / "oci")
    layout.prepare()
    return layout


@pytest.fixture
def store(tmp_path: Path) -> ObjectStore:
    store = ObjectStore(tmp_path / "objects")
    store.prepare()
    return store


@pytest.fixture
def images(tmp_path: Path, layout: ImageLayout, store: ObjectStore) -> Images:
    return Images(tmp_path, layout, store)
