"""`bootkit image ...`: bootable disk images, made and changed from the host."""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager
from pathlib import Path
from typing import TYPE_CHECKING

import click

from bootkit import diskimage
from bootkit.boot.backends import installable
from bootkit.cli.common import byte_progress, print_json
from bootkit.cli.init import uki_options
from bootkit.cli.options import kargs_options, requested_kargs, timeout_option, tries_option
from bootkit.cli.status import show_status
from bootkit.records.config import DEFAULT_TRIES, Bootloader
from bootkit.secureboot import signing
from bootkit.sysroot import operations
from bootkit.sysroot.bootfiles import InitramfsMode
from bootkit.sysroot.deploy import DeployRequest

_INITRAMFS = click.Choice([m.value for m in InitramfsMode])


def _import_progress(
    source: Path, total: Callable[[], int]
) -> AbstractContextManager[Callable[[int], None]]:
    return byte_progress(f"Importing {source.name}", total)


def _reporter(as_json: bool) -> diskimage.Report:
    """Steps go to stdout, unless stdout is for JSON."""
    if as_json:
        return lambda message: None
    return click.echo


if TYPE_CHECKING:
    # Generic since click 8.2; Debian 12 has 8.1, where subscripting fails at run time.
    _ParamType = click.ParamType[int]
else:
    _ParamType = click.ParamType


class _Size(_ParamType):
    name = "size"

    def convert(self, value: object, param: click.Parameter | None, ctx: click.Context | None) -> int:
        if isinstance(value, int):
            return value
        return diskimage.parse_size(str(value))


SIZE = _Size()
_IMAGE = click.argument("image", type=click.Path(dir_okay=False, path_type=Path))


@click.group()
def image() -> None:
    """Bootable GPT disk images holding a bootkit sysroot.

    Partition 1 is the ESP (FAT32) with the bootloader, the kernels and the boot
    entries; partition 2 is the ext4 root (label bootkit-root) with the
    deployments. Images are made and changed without root, loop devices or
    mounts, and every change replaces the image file in one rename.
    """


@image.command()
@_IMAGE
@click.argument("sources", nargs=-1, required=True,
                type=click.Path(exists=False, path_type=Path))
@click.option("--size", type=SIZE, required=True, help="Size of the disk image, e.g. 2G.")
@click.option("--bootloader", type=click.Choice([b.value for b in installable()]), required=True,
              help="The bootloader installed at EFI/BOOT/BOOTX64.EFI on the ESP.")
@click.option("--os", "os_name", help="Stateroot name (default: ID from the first source's "
              "os-release).")
@click.option("--esp-size", type=SIZE, default="256M", show_default=True,
              help="Size of the ESP, which holds every deployment's kernel and initramfs.")
@click.option("--karg", "kargs", multiple=True,
              help="Kernel argument for every deployment, e.g. console=ttyS0; repeat for more.")
@timeout_option
@click.option("--initramfs", type=_INITRAMFS, default="auto",
              show_default=True, help="As for 'bootkit deploy'.")
@tries_option("Boot counting, as for 'bootkit init': how often a new deployment is "
              "tried before the bootloader falls back; 0 turns counting off.",
              default=DEFAULT_TRIES, show_default=True)
@click.option("--force", is_flag=True, help="Replace IMAGE if it exists.")
@click.option("--json", "as_json", is_flag=True, help="Print the deployments made as JSON.")
@uki_options
def create(image: Path, sources: tuple[Path, ...], size: int, bootloader: str,
           os_name: str | None, esp_size: int, kargs: tuple[str, ...], timeout: int,
           initramfs: str, tries: int, force: bool, as_json: bool, uki: bool,
           signing_key: Path | None, signing_cert: Path | None,
           passphrase_file: Path | None, pcr_key: Path | None, pcr_cert: Path | None) -> None:
    """Make IMAGE with one deployment per SOURCE; the last one is the default.

    Each SOURCE is a root tree (directory or tar archive) as 'bootkit deploy'
    takes it. The root is found at boot by root=LABEL=bootkit-root; the
    bootloader menu is on the serial console as well as the screen.

    --uki and the signing options are those of 'bootkit init' and stay recorded
    in the image; with a key, the bootloader is signed as well, so the image
    boots under Secure Boot on firmware whose db trusts the certificate.
    """
    spec = diskimage.ImageSpec(
        output=image, size=size, bootloader=Bootloader(bootloader), sources=sources, os_name=os_name,
        esp_size=esp_size, kargs=kargs, timeout=timeout, initramfs=InitramfsMode(initramfs),
        tries=tries,
        force=force, settings=signing.boot_settings(uki, signing_key, signing_cert, passphrase_file,
                                                    pcr_key, pcr_cert),
    )
    ids = diskimage.create_image(spec, report=_reporter(as_json), progress=_import_progress)
    if as_json:
        print_json({"image": str(image), "deployments": ids})


@image.command()
@_IMAGE
@click.argument("source", type=click.Path(exists=False, path_type=Path))
@click.option("--version", help="Version shown in the menu (default: from os-release).")
@kargs_options("Kernel argument; repeat for more.")
@click.option("--no-default", is_flag=True, help="Add the deployment without making it the default.")
@click.option("--initramfs", type=_INITRAMFS, default="auto",
              show_default=True, help="As for 'bootkit deploy'.")
@tries_option("How often its entry is tried before the bootloader falls back (default: "
              "the image's setting); 0: not counted.")
@click.option("--json", "as_json", is_flag=True, help="Print the new deployment as JSON.")
def deploy(image: Path, source: Path, version: str | None, kargs: tuple[str, ...],
           karg_none: bool, no_default: bool, initramfs: str, tries: int | None,
           as_json: bool) -> None:
    """Add a deployment of SOURCE to IMAGE, keeping what was written to /etc and /var.

    Without --karg the new deployment keeps the kernel arguments of the previous
    deployment of its OS, as 'bootkit deploy' does; --karg-none gives it none.
    """
    request = DeployRequest(
        source, version=version, kargs=requested_kargs(kargs, karg_none),
        make_default=not no_default,
        initramfs=InitramfsMode(initramfs), tries=tries,
        stage=False,  # an image is not the running system, whatever this machine booted
    )
    dep = diskimage.deploy_to_image(image, request, _reporter(as_json), _import_progress)
    if as_json:
        print_json({"id": dep.id, "os": dep.os, "version": dep.version, "path": dep.path,
                    "default": not no_default})
    else:
        role = "the default" if not no_default else "not the default"
        click.echo(f"Deployed {dep.ref} ({dep.title} {dep.version}); {role}")


@image.command()
@_IMAGE
def rollback(image: Path) -> None:
    """Make the previous deployment (second in the menu) the default of IMAGE."""
    dep = diskimage.change_image(image, operations.rollback, click.echo)
    click.echo(f"Default is now {dep.ref} ({dep.title} {dep.version})")


@image.command("set-default")
@_IMAGE
@click.argument("ident", metavar="ID")
def set_default(image: Path, ident: str) -> None:
    """Make deployment ID (an id, <os>/<id>, or its serial number) the default of IMAGE."""
    dep = diskimage.change_image(image, lambda sr: operations.set_default(sr, ident), click.echo)
    click.echo(f"Default is now {dep.ref} ({dep.title} {dep.version})")


@image.command()
@_IMAGE
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def status(image: Path, as_json: bool) -> None:
    """List the deployments in IMAGE in boot menu order, as 'bootkit status' does."""
    with diskimage.read_image(image) as sr:
        show_status(sr, as_json)


COMMANDS = [image]
