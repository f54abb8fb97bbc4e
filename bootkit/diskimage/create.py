"""Making a bootable GPT disk image that holds a bootkit sysroot, without root or mounts.

The sysroot is built in a temporary directory by the core's own operations
(init, one deploy per source), the bootloader goes onto the staged ESP, and
both filesystems are then made from it inside a new file that becomes the
image in one rename. A failure leaves no image behind.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bootkit.boot import backends
from bootkit.diskimage.edit import replacing
from bootkit.diskimage.layout import (
    BOOT_DIR,
    DEFAULT_ESP_SIZE,
    MIB,
    ROOT_LABEL,
    DiskLayout,
    FilesystemIds,
    default_os_name,
    split_boot,
    write_filesystems,
)
from bootkit.diskimage.reporting import ImportProgress, Report, importing, no_progress, quiet
from bootkit.errors import BootkitError
from bootkit.formats import gpt
from bootkit.records.config import DEFAULT_TRIES, Bootloader, SysrootConfig
from bootkit.secureboot import signing
from bootkit.sysroot import operations
from bootkit.sysroot.bootfiles import InitramfsMode
from bootkit.sysroot.deploy import DeployRequest, deploy
from bootkit.sysroot.layout import Sysroot


@dataclass(frozen=True)
class ImageSpec:
    """A disk image to make: one deployment per source, the last one the default."""

    output: Path
    size: int  # bytes, a whole number of MiB
    bootloader: Bootloader  # one that backends.installable() lists
    sources: tuple[Path, ...]  # root trees: directories or tar archives
    os_name: str | None = None  # default: the os-release ID of the first source
    esp_size: int = DEFAULT_ESP_SIZE
    kargs: tuple[str, ...] = ()  # for every deployment
    timeout: int = 3  # boot menu timeout in seconds
    initramfs: InitramfsMode = InitramfsMode.AUTO
    tries: int = DEFAULT_TRIES  # boot counting; 0 turns it off
    force: bool = False  # replace an existing output file
    # Further sysroot settings (UKIs, the signing key); with a key the bootloader is signed too.
    settings: Mapping[str, Any] = field(default_factory=dict)


def create_image(
    spec: ImageSpec, report: Report = quiet, progress: ImportProgress = no_progress
) -> list[str]:
    """Make the image `spec` describes; the deployment ids, in the order deployed."""
    layout = _check(spec)
    with tempfile.TemporaryDirectory(prefix="bootkit-image-") as tmp:
        work = Path(tmp)
        sr = _init_sysroot(spec, work / "root")
        ids = _deploy_sources(sr, spec, report, progress)
        _install_bootloader(sr, spec.bootloader, report)
        esp_tree = split_boot(sr.path, work)
        _write_image(spec, layout, sr.path, esp_tree, report)
    report(f"Wrote {spec.output} ({spec.size // MIB} MiB)")
    return ids


def _check(spec: ImageSpec) -> DiskLayout:
    """Everything that can be refused before any work; the layout the image will have."""
    if spec.bootloader not in backends.installable():
        raise BootkitError(
            f"cannot make an image with bootloader {spec.bootloader!r}",
            hint=f"use one of {', '.join(backends.installable())}",
        )
    if not spec.sources:
        raise BootkitError("no source to deploy", hint="give at least one root tree")
    for source in spec.sources:
        if not source.exists():
            raise BootkitError(
                f"source {source} does not exist", hint="give a directory or a tar archive"
            )
    if spec.output.exists() and not spec.force:
        raise BootkitError(
            f"{spec.output} already exists", hint="choose another name, or ask to replace it"
        )
    if not spec.output.parent.is_dir():
        raise BootkitError(f"directory {spec.output.parent} does not exist")
    return DiskLayout.new(spec.size, spec.esp_size)


def _init_sysroot(spec: ImageSpec, root: Path) -> Sysroot:
    root.mkdir()
    os.chmod(root, 0o755)
    config = SysrootConfig(
        os=spec.os_name or default_os_name(spec.sources[0]),
        bootloader=spec.bootloader,
        boot_dir=BOOT_DIR,
        root_arg=f"root=LABEL={ROOT_LABEL}",
        timeout=spec.timeout,
        tries=spec.tries,
        **spec.settings,
    )
    return operations.init(Sysroot(root), config)


def _deploy_sources(
    sr: Sysroot, spec: ImageSpec, report: Report, progress: ImportProgress
) -> list[str]:
    ids = []
    for number, source in enumerate(spec.sources, 1):
        report(f"Deploying {source} ({number}/{len(spec.sources)})")
        with importing(progress, source) as counter:
            request = DeployRequest(source, kargs=spec.kargs or None, initramfs=spec.initramfs,
                                    stage=False)  # an image is never the running system
            dep = deploy(sr, request, counter)
        ids.append(dep.id)
    return ids


def _install_bootloader(sr: Sysroot, bootloader: str, report: Report) -> None:
    signer = signing.configured_signer(sr.config)
    report(f"Installing {bootloader} on the ESP"
           + (f", signed for {signer.subject}" if signer else ""))
    sr.boot.install_bootloader(signer)


def _write_image(
    spec: ImageSpec, layout: DiskLayout, root: Path, esp_tree: Path, report: Report
) -> None:
    with replacing(spec.output) as image:
        os.ftruncate(image.fd, spec.size)
        gpt.write_partition_table(image.path, layout.table)
        write_filesystems(image.path, layout, FilesystemIds.new(), root, esp_tree, report)
