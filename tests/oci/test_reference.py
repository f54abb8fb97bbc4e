"""Image references: what is accepted, what is refused, and the forms handed on."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bootkit.errors import BootkitError
from bootkit.oci.reference import ImageRef, Transport, is_image_reference

DIGEST = "sha256:" + "ab" * 32


@pytest.mark.parametrize("text, expected", [
    ("docker://quay.io/fedora/fedora-bootc:41",
     ImageRef(Transport.DOCKER, "quay.io/fedora/fedora-bootc", "41", None)),
    ("docker://127.0.0.1:5000/os", ImageRef(Transport.DOCKER, "127.0.0.1:5000/os", "latest", None)),
    ("docker://localhost/a/b/c:v1.2_3-x",
     ImageRef(Transport.DOCKER, "localhost/a/b/c", "v1.2_3-x", None)),
    (f"docker://registry.example.com:443/ns/os@{DIGEST}",
     ImageRef(Transport.DOCKER, "registry.example.com:443/ns/os", None, DIGEST)),
    ("docker://r.io/a__b/c-d/e.f", ImageRef(Transport.DOCKER, "r.io/a__b/c-d/e.f", "latest", None)),
    ("oci:/srv/images:os-1.0", ImageRef(Transport.OCI, "/srv/images", "os-1.0", None)),
    ("oci:/srv/images/", ImageRef(Transport.OCI, "/srv/images", None, None)),
    ("oci:/srv/images:ns/os:1.0", ImageRef(Transport.OCI, "/srv/images", "ns/os:1.0", None)),
    ("oci-archive:/srv/os.tar:stable", ImageRef(Transport.OCI_ARCHIVE, "/srv/os.tar", "stable", None)),
])
def test_parse_and_canonical_text_round_trip(text: str, expected: ImageRef) -> None:
    ref = ImageRef.parse(text)
    assert ref == expected
    assert ImageRef.parse(str(ref)) == ref
    assert ref.skopeo_name() == str(ref)


def test_canonical_text() -> None:
    assert str(ImageRef.parse("docker://127.0.0.1:5000/os")) == "docker://127.0.0.1:5000/os:latest"
    assert str(ImageRef.parse(f"docker://h.io/os@{DIGEST}")) == f"docker://h.io/os@{DIGEST}"
    assert str(ImageRef.parse("oci:/srv/x/../images/")) == "oci:/srv/images"
    assert str(ImageRef.parse("oci-archive:/a.tar:t")) == "oci-archive:/a.tar:t"


def test_a_relative_layout_path_is_made_absolute(tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    ref = ImageRef.parse("oci:images:v1")
    assert ref.name == str(tmp_path / "images") and ref.tag == "v1"


@pytest.mark.parametrize("text, says", [
    ("docker://fedora:41", "no repository name"),
    ("docker://fedora/fedora-bootc:41", "not a registry host"),
    ("docker://quay.io/Fedora/os", "not a repository name component"),
    ("docker://quay.io/a//b", "not a repository name component"),
    ("docker://quay.io/a-/b", "not a repository name component"),
    ("docker://quay.io/os:", "empty tag"),
    ("docker://quay.io/os:-bad", "is not a tag"),
    ("docker://quay.io/os:" + "t" * 129, "is not a tag"),
    (f"docker://quay.io/os:41@{DIGEST}", "a tag and a digest"),
    ("docker://quay.io/os@sha256:abc", "not a sha256 digest"),
    ("docker://quay.io/os@sha512:" + "ab" * 64, "not a sha256 digest"),
    ("docker://quay.io/os@" + DIGEST.upper(), "not a sha256 digest"),
    ("docker://-bad.io/os", "not a registry host"),
    ("docker://bad.io:port/os", "not a registry host"),
    ("docker://quay.io/" + "a" * 300, "longer than 255"),
    ("docker://quay.io/os:4 1", "whitespace"),
    ("docker://quay.io/os\n", "whitespace"),
    ("docker://quay.io/os\x1b[31m", "control characters"),
    ("docker://quay.io/os\u200b", "control characters"),
    ("oci:", "no path"),
    ("oci::tag", "no path"),
    ("oci:/srv/images:", "empty tag"),
    ("oci:/srv/images:a@sha256:x", "not an image name in a layout"),
    ("oci:/srv/images:-x", "not an image name in a layout"),
    ("oci:/" + "d" * 5000, "too long"),
    ("docker:quay.io/os", "unknown transport"),
    ("containers-storage:quay.io/os", "unknown transport"),
    ("/srv/tree", "unknown transport"),
])
def test_refused(text: str, says: str) -> None:
    with pytest.raises(BootkitError) as err:
        ImageRef.parse(text)
    assert says in err.value.message
    assert err.value.hint and "docker://" in err.value.hint


def test_error_shows_a_long_reference_shortened() -> None:
    with pytest.raises(BootkitError) as err:
        ImageRef.parse("docker://quay.io/" + "A" * 3000)
    assert len(err.value.message) < 400


def test_constructed_references_are_checked_too() -> None:
    with pytest.raises(BootkitError, match="not both"):
        ImageRef(Transport.DOCKER, "quay.io/os", "1", DIGEST)
    with pytest.raises(BootkitError, match="not both"):
        ImageRef(Transport.DOCKER, "quay.io/os", None, None)
    with pytest.raises(BootkitError, match="by digest"):
        ImageRef(Transport.OCI, "/srv/images", None, DIGEST)
    with pytest.raises(BootkitError, match="absolute"):
        ImageRef(Transport.OCI, "images", None, None)


def test_pinned_docker_reference_drops_the_tag() -> None:
    ref = ImageRef.parse("docker://quay.io/fedora/os:41")
    pinned = ref.pinned(DIGEST)
    assert str(pinned) == f"docker://quay.io/fedora/os@{DIGEST}"
    assert pinned.tag is None and pinned.digest == DIGEST
    assert ImageRef.parse(str(pinned)) == pinned
    with pytest.raises(BootkitError):
        ref.pinned("sha256:1234")


@pytest.mark.parametrize("text", ["oci:/srv/images:v1", "oci-archive:/srv/os.tar"])
def test_pinned_layout_reference_is_unchanged(text: str) -> None:
    ref = ImageRef.parse(text)
    assert ref.pinned(DIGEST) is ref


def test_docker_policy_scopes_most_specific_first() -> None:
    ref = ImageRef.parse("docker://reg.example.com:5000/ns/sub/os:41")
    assert ref.policy_scopes() == [
        "reg.example.com:5000/ns/sub/os:41",
        "reg.example.com:5000/ns/sub/os",
        "reg.example.com:5000/ns/sub",
        "reg.example.com:5000/ns",
        "reg.example.com:5000",
        "*.example.com",
        "*.com",
    ]
    assert ref.pinned(DIGEST).policy_scopes()[0] == f"reg.example.com:5000/ns/sub/os@{DIGEST}"
    assert ImageRef.parse("docker://localhost/os").policy_scopes() == [
        "localhost/os:latest", "localhost/os", "localhost"]


def test_layout_policy_scopes_are_the_resolved_path_and_its_parents(tmp_path: Path) -> None:
    real = tmp_path / "real"
    (real / "images").mkdir(parents=True)
    os.symlink(real, tmp_path / "link")
    ref = ImageRef.parse(f"oci:{tmp_path}/link/images:v1")
    scopes = ref.policy_scopes()
    assert scopes[0] == str(real / "images")
    assert scopes[1] == str(real)
    assert scopes[-1] == "/" + str(real).split("/")[1]
    assert "/" not in scopes and len(scopes) == len(real.parts)


@pytest.mark.parametrize("text, expected", [
    ("docker://quay.io/os", True), ("oci:/srv/x", True), ("oci-archive:/x.tar", True),
    ("/srv/tree", False), ("tree.tar.gz", False), ("docker:quay.io/os", False),
])
def test_is_image_reference(text: str, expected: bool) -> None:
    assert is_image_reference(text) is expected


_PIECES = st.sampled_from(["docker://", "oci:", "oci-archive:", "/", ":", "@", ".", "-", "_",
                           "__", "sha256:", "ab" * 32, "localhost", "q.io", "5000", "a", "B",
                           "..", " ", "\x00", "\u00e9", "\u202e"])


@settings(max_examples=200, deadline=None)
@given(st.lists(_PIECES, max_size=12).map("".join) | st.text(max_size=40))
def test_any_text_is_refused_or_round_trips(text: str) -> None:
    try:
        ref = ImageRef.parse(text)
    except BootkitError:
        return
    assert ImageRef.parse(str(ref)) == ref
    assert str(ref).isprintable() and not any(c.isspace() for c in str(ref))
