"""skopeo on local OCI layouts: copies, trust policies, failures and the bytes reported."""

from __future__ import annotations

import json
import os
import shutil
import sys
import tarfile
from pathlib import Path

import pytest

from bootkit.base import process
from bootkit.errors import BootkitError
from bootkit.oci import skopeo
from bootkit.oci.layout import ImageLayout
from bootkit.oci.manifest import Index, digest_of, host_architecture, parse_manifest_or_index
from bootkit.oci.reference import ImageRef
from bootkit.oci.skopeo import Trust, copy, inspect_raw

from bootkit_testing.oci import Built, write_image, write_index

pytestmark = pytest.mark.skipif(shutil.which("skopeo") is None, reason="skopeo not installed")

UNCHECKED = Trust(None, None, insecure=True)
Source = tuple[Path, Built]


def policy(tmp_path: Path, doc: object) -> Path:
    path = tmp_path / "policy.json"
    path.write_text(json.dumps(doc))
    return path


class Counted:
    def __init__(self) -> None:
        self.calls: list[int] = []

    def __call__(self, n: int) -> None:
        assert n > 0
        self.calls.append(n)


def test_copy_into_a_layout(tmp_path: Path, source: Source) -> None:
    layout, built = source
    dest = tmp_path / "dest"
    progress = Counted()
    copy(ImageRef.parse(f"oci:{layout}:v1"), dest, "main", UNCHECKED, progress)
    image = ImageLayout(dest)
    assert image.manifest_named("main") == built.manifest
    for digest, size in built.sizes.items():
        assert image.blob_path(digest).stat().st_size == size
    # Digests are kept: the manifest is the very one the source holds.
    assert image.read_blob(built.manifest) == (layout / "blobs/sha256" /
                                               built.manifest[7:]).read_bytes()
    assert sum(progress.calls) == sum(built.sizes.values())
    assert not [p for p in dest.iterdir() if p.name.startswith("oci-put-blob")]


def test_a_second_copy_reuses_blobs_even_emptied_ones(tmp_path: Path, source: Source) -> None:
    layout, built = source
    dest = tmp_path / "dest"
    ref = ImageRef.parse(f"oci:{layout}:v1")
    copy(ref, dest, "main", UNCHECKED, Counted())
    image = ImageLayout(dest)
    image.empty_blob(built.layers[0])
    write_image(layout, "v2", [{"usr/bin/a": b"a" * 5000}, {"etc/b": b"new"}])
    progress = Counted()
    copy(ImageRef.parse(f"oci:{layout}:v2"), dest, "next", UNCHECKED, progress)
    assert image.blob_path(built.layers[0]).stat().st_size == 0
    assert not image.has_blob(built.layers[0])
    v2 = image.manifest_named("next")
    assert v2 is not None and v2 != built.manifest
    new = {d for d in os.listdir(layout / "blobs/sha256")} - {d[7:] for d in built.sizes}
    assert len(new) == 3  # the changed layer, config and manifest
    assert sum(progress.calls) == sum((layout / "blobs/sha256" / d).stat().st_size for d in new)
    assert image.manifest_named("main") == built.manifest


def test_a_policy_is_passed_to_skopeo(tmp_path: Path, source: Source) -> None:
    layout, built = source
    trusting = policy(tmp_path, {"default": [{"type": "reject"}], "transports": {
        "oci": {str(layout.resolve()): [{"type": "insecureAcceptAnything"}]}}})
    copy(ImageRef.parse(f"oci:{layout}:v1"), tmp_path / "dest", "main",
         Trust(trusting, tmp_path), Counted())
    assert ImageLayout(tmp_path / "dest").manifest_named("main") == built.manifest


def test_a_policy_that_rejects(tmp_path: Path, source: Source) -> None:
    layout, _ = source
    rejecting = policy(tmp_path, {"default": [{"type": "reject"}]})
    progress = Counted()
    with pytest.raises(BootkitError) as err:
        copy(ImageRef.parse(f"oci:{layout}:v1"), tmp_path / "dest", "main",
             Trust(rejecting, None), progress)
    assert err.value.message.startswith(f"copying oci:{layout}:v1 failed: ")
    assert "is rejected by policy" in err.value.message
    assert "level=fatal" not in err.value.message and 'time="' not in err.value.message
    assert err.value.hint and "rejects this image" in err.value.hint
    assert progress.calls == []


def test_a_signature_required_but_missing(tmp_path: Path, source: Source) -> None:
    layout, _ = source
    key = tmp_path / "key.gpg"
    key.write_bytes(b"")
    signed = policy(tmp_path, {"default": [
        {"type": "signedBy", "keyType": "GPGKeys", "keyPath": str(key)}]})
    with pytest.raises(BootkitError, match="signature") as err:
        copy(ImageRef.parse(f"oci:{layout}:v1"), tmp_path / "dest", "main",
             Trust(signed, tmp_path / "registries.d"), Counted())
    assert err.value.hint and "not signed by a key the policy trusts" in err.value.hint


def test_insecure_trust_skips_the_policy(tmp_path: Path, source: Source) -> None:
    layout, built = source
    rejecting = policy(tmp_path, {"default": [{"type": "reject"}]})
    copy(ImageRef.parse(f"oci:{layout}:v1"), tmp_path / "dest", "main",
         Trust(rejecting, None, insecure=True), Counted())
    assert ImageLayout(tmp_path / "dest").manifest_named("main") == built.manifest


def test_a_missing_image(tmp_path: Path, source: Source) -> None:
    layout, _ = source
    with pytest.raises(BootkitError) as err:
        copy(ImageRef.parse(f"oci:{layout}:nothing"), tmp_path / "dest", "main", UNCHECKED,
             Counted())
    assert "nothing" in err.value.message
    with pytest.raises(BootkitError) as err:
        inspect_raw(ImageRef.parse(f"oci:{tmp_path}/none:v1"))
    assert "no such file or directory" in err.value.message
    assert err.value.hint == "check the image's name and tag"


@pytest.mark.parametrize("layout, name", [("dest", "a@b"), ("dest", ""), ("de:st", "main")])
def test_a_destination_skopeo_would_misread(tmp_path: Path, source: Source, layout: str,
                                            name: str) -> None:
    with pytest.raises(BootkitError, match="cannot copy into"):
        copy(ImageRef.parse(f"oci:{source[0]}:v1"), tmp_path / layout, name, UNCHECKED,
             Counted())
    assert not (tmp_path / layout).exists()


def test_inspect_raw(source: Source) -> None:
    layout, built = source
    ref = ImageRef.parse(f"oci:{layout}:v1")
    manifest = inspect_raw(ref)
    assert digest_of(manifest) == built.manifest
    assert digest_of(inspect_raw(ref, config=True)) == built.config


def test_an_index_is_copied_as_the_image_for_this_machine(tmp_path: Path,
                                                          source: Source) -> None:
    layout, here = source
    other = "s390x" if host_architecture() != "s390x" else "amd64"
    there = write_image(layout, "other", [{"x": b"x"}], architecture=other)
    index_digest = write_index(layout, "multi", {other: there, host_architecture(): here})
    ref = ImageRef.parse(f"oci:{layout}:multi")
    raw = inspect_raw(ref)
    index = parse_manifest_or_index(raw, digest_of(raw))
    assert isinstance(index, Index) and index.digest == index_digest
    assert index.choose(host_architecture()).digest == here.manifest
    assert digest_of(inspect_raw(ref, config=True)) == here.config
    copy(ref, tmp_path / "dest", "main", UNCHECKED, Counted())
    assert ImageLayout(tmp_path / "dest").manifest_named("main") == here.manifest


def test_copy_from_an_archive(tmp_path: Path, source: Source) -> None:
    layout, built = source
    archive = tmp_path / "image.tar"
    with tarfile.open(archive, "w") as tf:
        tf.add(layout, arcname=".")
    progress = Counted()
    copy(ImageRef.parse(f"oci-archive:{archive}:v1"), tmp_path / "dest", "main", UNCHECKED,
         progress)
    assert ImageLayout(tmp_path / "dest").manifest_named("main") == built.manifest
    assert sum(progress.calls) == sum(built.sizes.values())


def test_inspect_raw_output_is_bounded(source: Source, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(skopeo, "MAX_JSON", 100)
    with pytest.raises(BootkitError, match="wrote more than 100 bytes"):
        inspect_raw(ImageRef.parse(f"oci:{source[0]}:v1"))


def test_skopeo_missing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, source: Source) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setattr(process, "_SBIN", str(tmp_path))
    with pytest.raises(process.MissingProgram) as err:
        inspect_raw(ImageRef.parse(f"oci:{source[0]}:v1"))
    assert err.value.hint == "install the package skopeo"


def test_bytes_are_reported_as_they_land(tmp_path: Path) -> None:
    """What the copy's poll sees: new blobs and skopeo's temp files, each byte once."""
    layout = tmp_path / "layout"
    blobs = layout / "blobs/sha256"
    blobs.mkdir(parents=True)
    (blobs / ("1" * 64)).write_bytes(b"x" * 1000)  # there before: not counted
    (layout / "index.json").write_text("{}")
    progress = Counted()
    landing = skopeo._Landing(layout, progress)
    landing.poll()
    temp = layout / "oci-put-blob123"
    temp.write_bytes(b"y" * 300)
    landing.poll()
    temp.write_bytes(b"y" * 500)
    landing.poll()
    temp.rename(blobs / ("2" * 64))
    landing.poll()
    (blobs / ("3" * 64)).write_bytes(b"z" * 20)
    (layout / "index.json").write_text("{" + " " * 100 + "}")  # rewritten, not new
    landing.poll()
    assert progress.calls == [300, 200, 20]


def test_run_bounded_ticks_while_the_program_runs() -> None:
    ticks: list[int] = []
    result = process.run_bounded(
        [sys.executable, "-c", "import sys, time; time.sleep(0.35); "
         "sys.stdout.write('out'); sys.stderr.write('e' * 70000 + 'last'); sys.exit(3)"],
        "waiting", limit=10, tick=lambda: ticks.append(1), interval=0.05)
    assert result.returncode == 3 and result.stdout == b"out"
    assert result.stderr.endswith(b"last") and len(result.stderr) == 64 << 10
    assert len(ticks) >= 3


def test_run_bounded_kills_a_program_that_writes_too_much() -> None:
    with pytest.raises(BootkitError, match=r"flooding failed: .* wrote more than 1000 bytes"):
        process.run_bounded([sys.executable, "-c", "import time\nwhile True: print('x' * 999)"],
                            "flooding", limit=1000, interval=0.05)
