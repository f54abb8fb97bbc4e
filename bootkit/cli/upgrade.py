"""`bootkit upgrade` and `bootkit switch`: new deployments from OS images."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import click

from bootkit.cli.common import byte_progress, open_sysroot, print_json, sysroot_option
from bootkit.cli.deploy import image_label, run_deploy, say_deployed
from bootkit.cli.options import image_options
from bootkit.oci.reference import ImageRef
from bootkit.sysroot.images import upgrade as upgrading
from bootkit.sysroot.images.pull import ImageOptions, image_source, resolve

# What `upgrade --check` exits with when there is nothing new: the "skipped" status
# of automake and systemd's tests, which scripts and timers already tell apart from failure.
NO_UPDATE = 77

_stage_option = click.option(
    "--stage/--no-stage", default=None,
    help="Stage the new deployment (it joins the boot menu at shutdown) or switch at "
    "once. Default: staged when run inside a booted deployment of this sysroot.",
)
_json_option = click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")


@click.command()
@sysroot_option
@click.option("--check", is_flag=True,
              help="Only look: print the digests and what an upgrade would download; exit 0 "
              f"when there is an update, {NO_UPDATE} when there is none.")
@click.option("--download-only", is_flag=True,
              help="Fetch and import the update, switch nothing; the next 'bootkit upgrade' "
              "deploys it without the network.")
@_stage_option
@_json_option
def upgrade(sysroot: Path | None, check: bool, download_only: bool, stage: bool | None,
            as_json: bool) -> None:
    """Deploy what the image reference of the default deployment (or of the staged one)
    names now, if that changed: a new image pushed under its tag.

    The image is checked as when it was first deployed: the same signature policy
    file and lookaside settings, and unverified only if that deploy said --unverified.
    """
    sr = open_sysroot(sysroot)
    if check and download_only:
        raise click.UsageError("--check and --download-only exclude each other")
    if check:
        _check(upgrading.check(sr), as_json)
        return
    found, image = upgrading.next_image(sr, offline=not download_only)
    reference = found.origin.reference
    if image is None:
        _say(as_json, {"updated": False, "reference": reference,
                       "manifest_digest": found.origin.manifest_digest},
             f"No update: {reference} is still {found.origin.manifest_digest}")
    elif download_only:
        with byte_progress(image_label(sr, image), image_source(sr.images, image).size,
                           shown=not as_json) as bar:
            upgrading.download(sr, image, bar)
        _say(as_json, {"updated": False, "downloaded": True, "reference": reference,
                       "manifest_digest": image.digest},
             f"Downloaded {reference} ({image.digest}); 'bootkit upgrade' deploys it")
    else:
        dep = run_deploy(sr, upgrading.request_for(sr, image, stage), as_json)
        upgrading.forget_downloaded(sr)
        say_deployed(sr, dep, as_json, "default")


def _check(found: upgrading.UpdateCheck, as_json: bool) -> None:
    missing_bytes = sum(size for _, size in found.missing)
    if as_json:
        print_json({
            "reference": found.followed.origin.reference,
            "deployed": found.followed.origin.manifest_digest,
            "available": found.image.digest,
            "config": found.image.config.digest,
            "version": found.image.config.version,
            "update": found.available,
            "download_layers": len(found.missing) if found.available else 0,
            "download_bytes": missing_bytes if found.available else 0,
        })
    else:
        click.echo(f"{found.followed.origin.reference}")
        click.echo(f"  deployed:  {found.followed.origin.manifest_digest}")
        click.echo(f"  available: {found.image.digest} (config {found.image.config.digest})")
        if found.available:
            click.echo(f"  update: {len(found.missing)} layer(s), {missing_bytes} bytes to download")
        else:
            click.echo("  no update")
    if not found.available:
        sys.exit(NO_UPDATE)


def _say(as_json: bool, data: dict[str, Any], text: str) -> None:
    if as_json:
        print_json(data)
    else:
        click.echo(text)


@click.command()
@sysroot_option
@click.argument("image")
@image_options
@_stage_option
@_json_option
def switch(sysroot: Path | None, image: str, policy: Path | None, registries_d: Path | None,
           unverified: bool, stage: bool | None, as_json: bool) -> None:
    """Deploy another OS image IMAGE (a rebase); later upgrades follow it.

    IMAGE is docker://HOST[:PORT]/NAME[:TAG|@sha256:DIGEST], oci:DIR[:TAG] or
    oci-archive:FILE[:TAG]. /etc changes, /var and the admin's kernel arguments are
    kept, as with every deploy.
    """
    sr = open_sysroot(sysroot)
    resolved = resolve(ImageRef.parse(image), ImageOptions(policy, registries_d, unverified))
    dep = run_deploy(sr, upgrading.request_for(sr, resolved, stage), as_json)
    say_deployed(sr, dep, as_json, "default")


COMMANDS = [upgrade, switch]
