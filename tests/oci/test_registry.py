"""The registry and signature fixtures, checked with skopeo itself.

Whatever the image tests conclude rests on these: that the registry serves what was
pushed, that a policy from ImageTrust accepts exactly the images its key signed, and
that the byte count sees every transfer.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import subprocess
import time
from collections.abc import Mapping
from pathlib import Path

import pytest

from bootkit.base import process

from bootkit_testing.imagetrust import ImageTrust
from bootkit_testing.oci import write_image
from bootkit_testing.registry import Registry


def skopeo(*args: str | os.PathLike[str], env: Mapping[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["skopeo", *map(str, args)], env={**os.environ, **env},
                          capture_output=True, text=True, check=False)


def pull(registry: Registry, trust: ImageTrust, name: str, tag: str, dest: Path,
         digest: str | None = None) -> subprocess.CompletedProcess[str]:
    """Copy `name`:`tag` (or `name`@`digest`) to the layout `dest`, under the trust's policy."""
    source = f"docker://{registry.host}/{name}@{digest}" if digest else registry.reference(name, tag)
    # An oci: layout cannot store signatures: without --remove-signatures skopeo refuses
    # to copy a signed image there. They are checked all the same.
    return skopeo("--policy", trust.policy, "--registries.d", trust.registries_d,
                  "copy", "--remove-signatures", source, f"oci:{dest}:{tag}", env=registry.env)


@pytest.fixture
def image(tmp_path: Path) -> tuple[Path, str]:
    layout = tmp_path / "image"
    return layout, write_image(layout, "v1", [{"etc/os-release": b"ID=test\n"}]).manifest


def test_pushed_manifest_is_served_unchanged(registry: Registry, image: tuple[Path, str]) -> None:
    layout, digest = image
    assert registry.push(layout, "v1", "os/test") == digest
    raw = skopeo("inspect", "--raw", registry.reference("os/test", "v1"), env=registry.env)
    assert raw.returncode == 0, raw.stderr
    assert f"sha256:{hashlib.sha256(raw.stdout.encode()).hexdigest()}" == digest
    assert raw.stdout.encode() == (layout / "blobs" / "sha256" / digest[7:]).read_bytes()


def test_registry_environ_serves_in_process_runs(
    registry_environ: Registry, image: tuple[Path, str],
) -> None:
    """What bootkit does when a test calls it directly: skopeo with this process's
    environment."""
    registry_environ.push(image[0], "v1", "os/test")
    raw = process.run(["skopeo", "inspect", "--raw", registry_environ.reference("os/test", "v1")],
                      "inspecting the test image").stdout
    assert f"sha256:{hashlib.sha256(raw).hexdigest()}" == image[1]


def test_signed_image_passes_the_policy(
    registry: Registry, image_trust: ImageTrust, image: tuple[Path, str], tmp_path: Path,
) -> None:
    layout, digest = image
    assert registry.push(layout, "v1", "os/test", trust=image_trust) == digest
    assert list(image_trust.lookaside.rglob("signature-*"))
    copied = pull(registry, image_trust, "os/test", "v1", tmp_path / "pulled")
    assert copied.returncode == 0, copied.stderr
    index = json.loads((tmp_path / "pulled" / "index.json").read_text())
    assert [m["digest"] for m in index["manifests"]] == [digest]
    # Pinned to its digest, as an upgrade fetches what it checked, it passes too.
    copied = pull(registry, image_trust, "os/test", "v1", tmp_path / "pinned", digest)
    assert copied.returncode == 0, copied.stderr


def test_unsigned_image_is_refused(
    registry: Registry, image_trust: ImageTrust, image: tuple[Path, str], tmp_path: Path,
) -> None:
    registry.push(image[0], "v1", "os/test")
    copied = pull(registry, image_trust, "os/test", "v1", tmp_path / "pulled")
    assert copied.returncode != 0
    assert "signature was required, but no signature exists" in copied.stderr
    assert not (tmp_path / "pulled" / "index.json").exists()


def test_image_signed_by_another_key_is_refused(
    registry: Registry, image_trust: ImageTrust, image: tuple[Path, str], tmp_path: Path,
) -> None:
    other = image_trust.other_key()
    assert other.fingerprint != image_trust.fingerprint
    registry.push(image[0], "v1", "os/test", trust=other)
    copied = pull(registry, image_trust, "os/test", "v1", tmp_path / "pulled")
    assert copied.returncode != 0
    # gpgme cannot even check a signature by a key the policy does not hold.
    assert "Source image rejected: Invalid GPG signature" in copied.stderr
    # The same signature passes the other key's policy: what was refused is the key.
    copied = pull(registry, other, "os/test", "v1", tmp_path / "pulled")
    assert copied.returncode == 0, copied.stderr


def test_signature_is_bound_to_the_reference(
    registry: Registry, image_trust: ImageTrust, image: tuple[Path, str], tmp_path: Path,
) -> None:
    """A signature names the repository it was made for: the same manifest copied to
    another repository is not signed there."""
    registry.push(image[0], "v1", "os/test", trust=image_trust)
    registry.push(image[0], "v1", "os/elsewhere")
    for sig in image_trust.lookaside.glob("os/test@*"):
        target = image_trust.lookaside / "os" / sig.name.replace("test@", "elsewhere@", 1)
        target.mkdir(parents=True)
        for f in sig.iterdir():
            (target / f.name).write_bytes(f.read_bytes())
    copied = pull(registry, image_trust, "os/elsewhere", "v1", tmp_path / "pulled")
    assert copied.returncode != 0
    assert f"Signature for identity {registry.host}/os/test:v1 is not accepted" in copied.stderr


def test_served_bytes_count_only_what_is_downloaded(registry: Registry, tmp_path: Path) -> None:
    layout = tmp_path / "image"
    big = os.urandom(256 << 10)  # random: gzip leaves it as large
    write_image(layout, "v1", [{"usr/big": big}, {"etc/version": b"1\n"}])
    write_image(layout, "v2", [{"usr/big": big}, {"etc/version": b"2\n"}])
    registry.push(layout, "v1", "os/test")
    registry.push(layout, "v2", "os/test")
    registry.reset_count()
    assert registry.served_bytes() == 0

    raw = skopeo("inspect", "--raw", registry.reference("os/test", "v1"), env=registry.env)
    assert raw.returncode == 0, raw.stderr
    checked = registry.served_bytes()
    assert len(raw.stdout) < checked < 16 << 10

    def download(tag: str) -> int:
        registry.reset_count()
        copied = skopeo("--insecure-policy", "copy", registry.reference("os/test", tag),
                        f"oci:{tmp_path / 'pulled'}:{tag}", env=registry.env)
        assert copied.returncode == 0, copied.stderr
        return registry.served_bytes()

    assert download("v1") > len(big)
    # The big layer is in the layout already: only the small one comes.
    assert download("v2") < 32 << 10


def test_stop_leaves_nothing_listening(tmp_path: Path) -> None:
    with Registry(tmp_path / "registry") as registry:
        ports = [int(registry.host.rsplit(":", 1)[1]), int(registry.backend_host.rsplit(":", 1)[1])]
        with socket.create_connection(("127.0.0.1", ports[0])):
            pass  # a link still open at stop must not hold it up
    for port in ports:
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", port), timeout=1).close()


def _processes_mentioning(text: str) -> list[str]:
    found = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            args = cmdline.read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue  # ended while listed
        if text in args:
            found.append(args)
    return found


def test_image_trust_leaves_no_gpg_agent(registry: Registry, tmp_path: Path) -> None:
    trust = ImageTrust(tmp_path / "trust", registry.host)
    other = trust.other_key()
    write_image(tmp_path / "image", "v1", [{"a": b"a"}])
    registry.push(tmp_path / "image", "v1", "os/test", trust=trust)
    homes = [str(trust.gnupghome), str(other.gnupghome)]
    assert any(_processes_mentioning(home) for home in homes)  # else this test tests nothing
    trust.close()
    # gpgconf asks the agents to go and returns; on a busy machine they take a moment.
    deadline = time.monotonic() + 20
    while (left := [p for home in homes for p in _processes_mentioning(home)]) and (
            time.monotonic() < deadline):
        time.sleep(0.1)
    assert left == []
