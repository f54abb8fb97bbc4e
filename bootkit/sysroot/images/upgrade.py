"""`bootkit upgrade` and `bootkit switch`: a new deployment from the image the current
one came from (it may have changed under its tag), or from another image.

The deployment followed is the staged one if there is one, else the default: an
upgrade after a switch follows the switch. It is checked and fetched as it was the
first time (same policy file, same lookaside settings; unverified only if it was).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass

from bootkit.errors import BootkitError
from bootkit.oci.reference import ImageRef
from bootkit.records import downloaded
from bootkit.records.deployment import Deployment, ImageOrigin
from bootkit.sysroot import inventory
from bootkit.sysroot.deploy import DeployRequest
from bootkit.sysroot.images.layers import import_layers
from bootkit.sysroot.images.pull import (
    ImageOptions,
    ResolvedImage,
    fetch,
    from_layout,
    resolve,
)
from bootkit.sysroot.layout import Sysroot

log = logging.getLogger("bootkit")
Progress = Callable[[int], None]


@dataclass(frozen=True)
class Followed:
    deployment: Deployment
    origin: ImageOrigin


@dataclass(frozen=True)
class UpdateCheck:
    """What `upgrade --check` found: the image now, and what fetching it would download."""

    followed: Followed
    image: ResolvedImage
    missing: list[tuple[str, int]]  # layers (digest, bytes) not on this machine yet

    @property
    def available(self) -> bool:
        return self.image.digest != self.followed.origin.manifest_digest


def followed(sr: Sysroot) -> Followed:
    """The deployment whose image an upgrade looks for anew."""
    state = sr.state()
    ref = inventory.staged_ref(sr, state) or state.default
    if ref is None:
        raise BootkitError("there is no deployment to upgrade",
                           hint="deploy an image first: 'bootkit deploy docker://...'")
    os_name, dep_id = ref.split("/", 1)
    dep = Deployment.load(sr.metadata_path(os_name, dep_id))
    if dep.image is None:
        raise BootkitError(
            f"{ref} was deployed from {dep.source}, not from an OS image",
            hint="'bootkit switch IMAGE' deploys an image and makes upgrades follow it",
        )
    return Followed(dep, dep.image)


def check(sr: Sysroot) -> UpdateCheck:
    """Resolve the followed reference: its manifest and config only, nothing downloaded."""
    found = followed(sr)
    image = resolve(ImageRef.parse(found.origin.reference), ImageOptions.of(found.origin))
    return UpdateCheck(found, image, image.missing_layers(sr.images))


def next_image(sr: Sysroot, *, offline: bool = True) -> tuple[Followed, ResolvedImage | None]:
    """The image an upgrade deploys, or None when the followed reference names the image
    deployed already.

    An image `--download-only` fetched for this reference before is taken from the
    layout with no network, unless not `offline`."""
    found = followed(sr)
    ready = _downloaded_for(sr, found) if offline else None
    if ready is not None:
        return found, from_layout(sr.images, ready)
    image = resolve(ImageRef.parse(found.origin.reference), ImageOptions.of(found.origin))
    return found, None if image.digest == found.origin.manifest_digest else image


def request_for(sr: Sysroot, image: ResolvedImage, stage: bool | None) -> DeployRequest:
    """A deploy of `image` into the OS of the default deployment."""
    state = sr.state()
    current = sr.resolve(state.default, state) if state.default else None
    return DeployRequest(source=image, os_name=current.os if current else None, stage=stage)


def forget_downloaded(sr: Sysroot) -> None:
    """Once the downloaded image is deployed, the next upgrade looks for a newer one."""
    with contextlib.suppress(OSError):
        sr.downloaded_path.unlink(missing_ok=True)


def download(sr: Sysroot, image: ResolvedImage, progress: Progress) -> None:
    """Fetch the image and import its layers, switching nothing; the next upgrade
    deploys it from the layout."""
    layout, store = sr.images, sr.objects
    with sr.locked():
        fetch(layout, image, progress)
        import_layers(layout, store, list(zip(image.manifest.layers, image.config.diff_ids,
                                              strict=True)), progress)
        downloaded.save(sr.downloaded_path, image.origin())


def _downloaded_for(sr: Sysroot, found: Followed) -> ImageOrigin | None:
    """The image `--download-only` left for this reference, if it is not the one deployed."""
    try:
        ready = downloaded.load(sr.downloaded_path)
    except BootkitError as err:
        log.warning("%s; fetching the update anew", err.message)
        return None
    if ready is None or ready.reference != found.origin.reference:
        return None
    if ready.manifest_digest == found.origin.manifest_digest:
        return None
    return ready
