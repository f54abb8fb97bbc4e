"""`bootkit deploy`: a root tree becomes a deployment, and the default."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import click

from bootkit.cli.common import (
    byte_progress,
    open_sysroot,
    print_json,
    staged_json,
    status_json,
    sysroot_option,
)
from bootkit.cli.options import image_options, kargs_options, requested_kargs, tries_option
from bootkit.oci.reference import is_image_reference
from bootkit.records.deployment import Deployment
from bootkit.sysroot.bootfiles import InitramfsMode
from bootkit.sysroot.deploy import DeployRequest
from bootkit.sysroot.deploy import deploy as deploy_request
from bootkit.sysroot.importers import open_source
from bootkit.sysroot.layout import Sysroot
from bootkit.sysroot.status import StagedStatus, status

# The image modules (the OCI records, the layer readers) are loaded only for an image,
# so that deploying a tree does not pay for them at start-up.
if TYPE_CHECKING:
    from bootkit.sysroot.images.pull import ResolvedImage


@click.command()
@sysroot_option
@click.argument("source")
@click.option("--os", "os_name", help="Stateroot to deploy into (default: the one from init).")
@click.option("--version", help="Version shown in the menu (default: VERSION_ID from os-release).")
@kargs_options(
    "Extra kernel argument; repeat for more. Default: those of the current deployment "
    "of the same OS."
)
@click.option(
    "--no-default", is_flag=True, help="Add the deployment without making it the default."
)
@click.option(
    "--initramfs",
    type=click.Choice([m.value for m in InitramfsMode]),
    default=InitramfsMode.AUTO.value,
    show_default=True,
    help="Use the tree's own initramfs (tree), build one with bootkit (build), or the "
    "tree's when it has one (auto).",
)
@tries_option(
    "How often its entry is tried before the bootloader falls back to the previous "
    "deployment (default: the sysroot's setting from 'bootkit init --tries'); 0: not counted."
)
@click.option(
    "--stage/--no-stage", default=None,
    help="Stage the deployment: everything is put in place now, but the boot menu "
    "switches to it only at shutdown ('bootkit finalize-staged'), with /etc merged then. "
    "Default: staged when run inside a booted deployment of this sysroot, else not.",
)
@click.option(
    "--lock", is_flag=True,
    help="With staging: keep the staged deployment out of the menu until "
    "'bootkit finalize-staged --unlock' (or --now); a shutdown while locked discards it.",
)
@image_options
@click.option(
    "--json", "as_json", is_flag=True,
    help="Print the new deployment as JSON, as 'status --json' lists it; a staged one as "
    "{\"staged\": {...}}, the form of 'status --json' for it.",
)
def deploy(
    sysroot: Path | None,
    source: str,
    os_name: str | None,
    version: str | None,
    kargs: tuple[str, ...],
    karg_none: bool,
    no_default: bool,
    initramfs: str,
    tries: int | None,
    stage: bool | None,
    lock: bool,
    policy: Path | None,
    registries_d: Path | None,
    unverified: bool,
    as_json: bool,
) -> None:
    """Deploy SOURCE: a root tree (directory, or tar archive: plain, gzip, xz, zstd), or
    an OS image: docker://HOST[:PORT]/NAME[:TAG|@sha256:DIGEST], oci:DIR[:TAG] or
    oci-archive:FILE[:TAG].

    An image is fetched with skopeo, its signatures checked against the policy
    (containers-policy.json), and imported layer by layer; it must be labelled
    bootable (containers.bootc=1 or ostree.bootable) and built for this machine.
    'bootkit upgrade' later deploys what its reference names then.

    The kernel is taken from usr/lib/modules/<kver>/vmlinuz (initramfs.img beside
    it) or boot/vmlinuz-<kver> (with boot/initrd.img-<kver>). Files identical to ones
    already deployed are stored once. The new /etc is the tree's defaults (usr/etc,
    or its /etc) plus the changes made in the current deployment's /etc.

    /var is shared by all deployments of an OS: it is filled from the tree's /var
    only while it is empty; later deploys never touch it.

    Inside a running system the deployment is staged: it joins the boot menu at
    shutdown. A new deploy replaces a deployment staged before.
    """
    sr = open_sysroot(sysroot)
    request = DeployRequest(
        source=_source(source, policy, registries_d, unverified), os_name=os_name, version=version,
        kargs=requested_kargs(kargs, karg_none), make_default=not no_default,
        initramfs=InitramfsMode(initramfs), tries=tries, stage=stage, lock=lock,
    )
    dep = run_deploy(sr, request, as_json)
    say_deployed(sr, dep, as_json, "default" if not no_default else "not default")


def _source(
    text: str, policy: Path | None, registries_d: Path | None, unverified: bool
) -> Path | ResolvedImage:
    """The tree at a path, or the image a reference names (resolved: a few KB fetched)."""
    if is_image_reference(text):
        from bootkit.oci.reference import ImageRef
        from bootkit.sysroot.images.pull import ImageOptions, resolve

        return resolve(ImageRef.parse(text), ImageOptions(policy, registries_d, unverified))
    if policy is not None or registries_d is not None or unverified:
        raise click.UsageError("--policy, --registries-d and --unverified are for OS images")
    return Path(text)


def run_deploy(sr: Sysroot, request: DeployRequest, as_json: bool) -> Deployment:
    """Deploy with a progress bar: bytes read of a tree, or fetched and imported of an image."""
    source = request.source
    if not isinstance(source, Path):
        from bootkit.sysroot.images.pull import image_source

        label, total = image_label(sr, source), image_source(sr.images, source).size
    else:
        tree = source
        label, total = f"Importing {tree.name}", lambda: open_source(tree).size()
    with byte_progress(label, total, shown=not as_json) as bar:
        return deploy_request(sr, request, bar)


def image_label(sr: Sysroot, image: ResolvedImage) -> str:
    """What the bar says of an image: its reference and how many layers are new here."""
    layers = len(image.manifest.layers)
    new = len(image.missing_layers(sr.images))
    return f"Fetching {image.ref} ({new} of {layers} layers new)"


def say_deployed(sr: Sysroot, dep: Deployment, as_json: bool, role: str) -> None:
    found = status(sr)
    if found.staged is not None and found.staged.ref == dep.ref:
        _say_staged(found.staged, as_json)
    elif as_json:
        row = found.find(dep.ref)
        print_json(status_json(row) if row else {})
    else:
        click.echo(
            f"Deployed {dep.ref} ({dep.title} {dep.version}, kernel {dep.kernel_version}); {role}"
        )


def _say_staged(staged: StagedStatus, as_json: bool) -> None:
    if as_json:
        print_json({"staged": staged_json(staged)})
        return
    when = ("when 'bootkit finalize-staged --unlock' or '--now' allows it" if staged.locked
            else "at shutdown")
    click.echo(f"Staged {staged.ref} ({staged.title} {staged.version}); it joins the boot "
               f"menu {when}")


COMMANDS = [deploy]
