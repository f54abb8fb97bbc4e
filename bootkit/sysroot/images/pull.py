"""Finding an OS image and bringing it into the sysroot's OCI layout.

`resolve` reads what a reference names today: its manifest and config, a few
kilobytes, checked before anything is downloaded (a bootable image for this
machine's architecture, the signature policy that will apply). `fetch` has skopeo
copy exactly that manifest, by digest where the transport allows it, into the
shared layout; skopeo enforces the signature policy and skips the blobs already
there. What skopeo inspected is not trusted: every blob read afterwards is checked
against its digest, and the manifest that landed must be the one resolved.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from bootkit.errors import BootkitError
from bootkit.oci import skopeo
from bootkit.oci.layout import ImageLayout
from bootkit.oci.manifest import (
    ImageConfig,
    Index,
    Manifest,
    check_architecture,
    check_bootable,
    check_layers,
    digest_of,
    host_architecture,
    parse_config,
    parse_manifest_or_index,
)
from bootkit.oci.policy import Verification, check_policy
from bootkit.oci.reference import ImageRef, Transport
from bootkit.records.deployment import ImageOrigin
from bootkit.sysroot.images.layers import RECORD, layer_dir
from bootkit.sysroot.images.source import ImageSource

Progress = Callable[[int], None]


@dataclass(frozen=True)
class ImageOptions:
    """How an image is fetched and checked: the deploy's options, or a deployment's record."""

    policy: Path | None = None  # containers-policy.json; None: /etc/containers/policy.json
    registries_d: Path | None = None  # signature lookaside settings; None: skopeo's own
    unverified: bool = False  # take it even though no signature is required

    def __post_init__(self) -> None:
        # Recorded on the deployment for later upgrades, run from any directory.
        for name in ("policy", "registries_d"):
            path = getattr(self, name)
            if path is not None:
                object.__setattr__(self, name, path.absolute())

    @classmethod
    def of(cls, origin: ImageOrigin) -> ImageOptions:
        """The options a deployment was made with: an upgrade checks as its deploy did."""
        return cls(
            policy=Path(origin.policy) if origin.policy else None,
            registries_d=Path(origin.registries_d) if origin.registries_d else None,
            unverified=not origin.verified,
        )

    def trust(self, verification: Verification) -> skopeo.Trust:
        """What skopeo is told: the policy file checked here, named, so that skopeo
        does not prefer another (root's ~/.config/containers/policy.json)."""
        policy = self.policy or (Path(verification.policy) if verification.policy else None)
        return skopeo.Trust(policy, self.registries_d, insecure=self.unverified)


@dataclass(frozen=True)
class ResolvedImage:
    """One image manifest, chosen for this machine, with its config."""

    ref: ImageRef  # as asked for (a tag follows the image; it is recorded so)
    manifest: Manifest
    config: ImageConfig
    verification: Verification
    options: ImageOptions
    fetched: bool = False  # in the layout already, its layers imported (--download-only)

    @property
    def digest(self) -> str:
        return self.manifest.digest

    @property
    def ref_name(self) -> str:
        """Its name in the shared layout: one per manifest, so names never move."""
        return "bootkit-" + self.digest.removeprefix("sha256:")

    def origin(self) -> ImageOrigin:
        return ImageOrigin(
            reference=str(self.ref),
            manifest_digest=self.digest,
            config_digest=self.config.digest,
            diff_ids=self.config.diff_ids,
            version=self.config.version or "",
            verified=self.verification.verified,
            policy=str(self.options.policy or self.verification.policy or ""),
            registries_d=str(self.options.registries_d or ""),
        )

    def missing_layers(self, layout: ImageLayout) -> list[tuple[str, int]]:
        """The layers (digest, bytes) a fetch would download: neither imported nor present."""
        return [
            (layer.digest, layer.size)
            for layer, diff_id in zip(self.manifest.layers, self.config.diff_ids, strict=True)
            if not layout.has_blob(layer.digest) and not layer_imported(layout, diff_id)
        ]


def layer_imported(layout: ImageLayout, diff_id: str) -> bool:
    return os.path.isfile(layer_dir(layout, diff_id) / RECORD)


def resolve(ref: ImageRef, options: ImageOptions) -> ResolvedImage:
    """What `ref` names now: refused before any download if it could not be deployed."""
    verification = check_policy(ref, options.policy, options.unverified)
    manifest = _manifest(ref)
    raw_config = skopeo.inspect_raw(ref.pinned(manifest.digest), config=True)
    if digest_of(raw_config) != manifest.config.digest:
        raise BootkitError(
            f"{ref}: the image config the source sent is not the one its manifest names",
            hint="the source may be changing under bootkit or tampered with; try again",
        )
    config = parse_config(raw_config, manifest.config.digest)
    _check_deployable(manifest, config, str(ref))
    return ResolvedImage(ref, manifest, config, verification, options)


def _manifest(ref: ImageRef) -> Manifest:
    raw = skopeo.inspect_raw(ref)
    found = parse_manifest_or_index(raw, digest_of(raw))
    if isinstance(found, Manifest):
        return found
    assert isinstance(found, Index)
    if ref.transport is not Transport.DOCKER:
        raise BootkitError(
            f"{ref} is a multi-platform index; bootkit reads one platform's image from a "
            "local layout or archive",
            hint="copy the image for this machine only, e.g. 'skopeo copy docker://... "
            "oci-archive:FILE' without --all",
        )
    chosen = found.choose(host_architecture())
    raw = skopeo.inspect_raw(ref.pinned(chosen.digest))
    if digest_of(raw) != chosen.digest:
        raise BootkitError(
            f"{ref}: the manifest the registry sent is not the one its index names",
            hint="the registry may be tampered with; try again or use another mirror",
        )
    manifest = parse_manifest_or_index(raw, chosen.digest)
    if not isinstance(manifest, Manifest):
        raise BootkitError(f"{ref}: its index names another index, not an image",
                           hint="deploy a reference to one image")
    return manifest


def _check_deployable(manifest: Manifest, config: ImageConfig, ref: str) -> None:
    check_layers(manifest, config)
    check_bootable(config, ref)
    check_architecture(config, ref)


def fetch(layout: ImageLayout, image: ResolvedImage, progress: Progress) -> None:
    """Copy the image into the layout with skopeo, which checks its signatures; the
    layers imported before are not downloaded again."""
    layout.prepare()
    for layer, diff_id in zip(image.manifest.layers, image.config.diff_ids, strict=True):
        if not layout.has_blob(layer.digest) and not layer_imported(layout, diff_id):
            layout.forget_emptied(layer.digest)  # an emptied blob with no record: fetch it again
    skopeo.copy(image.ref.pinned(image.digest), layout.root, image.ref_name,
                image.options.trust(image.verification), progress)
    landed = layout.manifest_named(image.ref_name)
    if landed != image.digest:
        raise BootkitError(
            f"{image.ref} changed while it was copied (manifest {landed}, not {image.digest})",
            hint="run the command again once the image stops changing",
        )


def from_layout(layout: ImageLayout, origin: ImageOrigin) -> ResolvedImage:
    """An image fetched before (`upgrade --download-only`), read back with no network."""
    raw = layout.read_blob(origin.manifest_digest)
    manifest = parse_manifest_or_index(raw, origin.manifest_digest)
    if not isinstance(manifest, Manifest):
        raise BootkitError(f"{origin.reference}: the downloaded manifest is not an image",
                           hint="run 'bootkit upgrade' again to fetch it anew")
    config = parse_config(layout.read_blob(manifest.config.digest), manifest.config.digest)
    _check_deployable(manifest, config, origin.reference)
    options = ImageOptions.of(origin)
    verification = Verification(origin.verified, origin.policy)
    return ResolvedImage(ImageRef.parse(origin.reference), manifest, config, verification,
                         options, fetched=True)


def image_source(layout: ImageLayout, image: ResolvedImage) -> ImageSource:
    """The image as a deploy's source: fetched (unless it was before) when it is imported."""
    fetcher = None if image.fetched else (lambda progress: fetch(layout, image, progress))
    return ImageSource(layout, image.manifest, image.config, str(image.ref), fetcher)
