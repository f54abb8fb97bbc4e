"""Deployment metadata: `/bootkit/deploy/<os>/deploy/<id>.json` beside the tree it describes.

Fields added later have defaults, so metadata written before them still loads.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from bootkit.base.files import atomic_write
from bootkit.contract import check_name, deployment_path
from bootkit.errors import BootkitError
from bootkit.formats import bootvalues
from bootkit.records.jsonfields import typed_fields


@dataclass(frozen=True)
class PayloadFile:
    """One file of a deployment's payload on $BOOT, as the deploy copied it there."""

    name: str  # "linux", "initrd" or "uki.efi"
    sha256: str
    # Where in the deployment's tree it came from, so that it can be copied again;
    # None when bootkit built it (an initramfs, a UKI).
    source: str | None = None


@dataclass(frozen=True)
class ImageOrigin:
    """The OCI image a deployment's tree was made from, and how it was checked."""

    reference: str  # as given: docker://..., oci:DIR[:TAG] or oci-archive:FILE[:TAG]
    manifest_digest: str
    config_digest: str
    diff_ids: tuple[str, ...]  # its layers, which `cleanup` keeps while it is kept
    version: str = ""  # the image's org.opencontainers.image.version label
    # A signature policy that demands signatures was enforced when it was fetched;
    # False only when the deploy said --unverified.
    verified: bool = False
    policy: str = ""  # the containers-policy.json it was checked against ("": skopeo's own)
    registries_d: str = ""  # where signature lookaside settings came from ("": skopeo's own)

    def __post_init__(self) -> None:
        """Refuse what a record may not hold, when made as when loaded: each value is
        shown by `status`."""
        # Loaded here, for records of images only: a tree's deploy does without them.
        from bootkit.oci.manifest import check_digest
        from bootkit.oci.reference import ImageRef

        ImageRef.parse(self.reference)
        for digest in (self.manifest_digest, self.config_digest, *self.diff_ids):
            check_digest(digest, "image digest")
        if self.version:
            bootvalues.check_version(self.version, "image version label")
        for path in (self.policy, self.registries_d):
            if path and (not path.startswith("/") or not path.isprintable()):
                raise BootkitError(f"image record names a file wrongly: {path!r}")


@dataclass(frozen=True)
class Deployment:
    os: str
    id: str
    version: str
    source: str
    kernel_version: str
    payload: str  # "<kver>-<sha256 prefix>" under $BOOT/bootkit/<os>/
    title: str
    created: float
    serial: int
    # The admin's kernel arguments: given at deploy or by `bootkit kargs`, carried over
    # to the next deployment of the OS.
    kargs: tuple[str, ...] = field(default=())
    pinned: bool = False
    # Its payload is one Unified Kernel Image (kernel, initrd and its command line).
    uki: bool = False
    # Identifies the imported tree's content: the same tree gives the same digest,
    # from a directory or an archive, on any machine (see `bootkit.sysroot.contentdigest`).
    content_digest: str = ""
    # The same without /etc, /usr/etc and /var: `bootkit fsck` checks the tree against it.
    os_digest: str = ""
    # The payload's files with their digests; empty in metadata older than them.
    payload_files: tuple[PayloadFile, ...] = field(default=())
    # The kernel arguments its tree ships (`bootkit.sysroot.imageargs`), before the
    # admin's on the command line; empty in metadata older than them.
    image_kargs: tuple[str, ...] = field(default=())
    # The OCI image its tree came from; None for a directory or archive.
    image: ImageOrigin | None = None

    @property
    def ref(self) -> str:
        return f"{self.os}/{self.id}"

    @property
    def path(self) -> str:
        """Its path on the physical root, as `bootkit=` names it."""
        return deployment_path(self.os, self.id)

    def with_changes(self, **changes: Any) -> Deployment:
        return replace(self, **changes)

    def to_json(self) -> str:
        data = asdict(self)
        data["kargs"] = list(self.kargs)
        data["image_kargs"] = list(self.image_kargs)
        data["payload_files"] = [asdict(f) for f in self.payload_files]
        if self.image is not None:
            data["image"]["diff_ids"] = list(self.image.diff_ids)
        return json.dumps(data, indent=2) + "\n"

    def save(self, path: Path) -> None:
        atomic_write(path, self.to_json())

    @classmethod
    def load(cls, path: Path) -> Deployment:
        """The metadata at `path`, which must name the deployment the file is named for."""
        os_name, dep_id = path.parent.parent.name, path.name.removesuffix(".json")
        hint = (
            f"'bootkit fsck --repair' rebuilds it from the deployment's boot entry; "
            f"'bootkit undeploy {os_name}/{dep_id}' removes the deployment"
        )
        try:
            data = json.loads(path.read_text())
            dep = cls(**typed_fields(cls, data, path, hint))
        except (OSError, ValueError, TypeError) as err:
            raise BootkitError(f"cannot read deployment metadata {path}: {err}", hint=hint) from None
        except BootkitError as err:
            raise BootkitError(f"cannot read deployment metadata: {err.message}", hint=hint) from None
        try:
            _check_boot_values(dep)
        except BootkitError as err:
            raise BootkitError(f"deployment metadata {path}: {err.message}", hint=hint) from None
        check_name(dep.os, "os")
        check_name(dep.id, "deployment")
        if (dep.os, dep.id) != (os_name, dep_id):
            raise BootkitError(
                f"deployment metadata {path} describes {dep.ref}, not {os_name}/{dep_id}", hint=hint
            )
        # Both name files on $BOOT: one path component each, of the files a payload has.
        if not _is_component(dep.payload) or any(
            f.name not in PAYLOAD_FILE_NAMES for f in dep.payload_files
        ):
            raise BootkitError(f"deployment metadata {path} names boot files wrongly", hint=hint)
        return dep


# The files a payload may hold: kernel and initramfs, or one Unified Kernel Image.
PAYLOAD_FILE_NAMES = frozenset({"linux", "initrd", "uki.efi"})


def _is_component(name: str) -> bool:
    return bool(name) and name not in (".", "..") and "/" not in name and name.isprintable()


def _check_boot_values(dep: Deployment) -> None:
    """What a record says that reaches a boot entry: refused here as when it was made."""
    bootvalues.check_title(dep.title)
    bootvalues.check_version(dep.version)
    bootvalues.check_kernel_version(dep.kernel_version)
    bootvalues.check_word(dep.payload, "payload name")
    for karg in dep.kargs:
        bootvalues.check_kernel_argument(karg)
    for karg in dep.image_kargs:
        bootvalues.check_kernel_argument(karg, "image kernel argument")

