"""`bootkit etc`: what the admin changed in a deployment's /etc."""

from __future__ import annotations

import json
from pathlib import Path

import click

from bootkit.cli.common import open_sysroot, sysroot_option
from bootkit.sysroot.etctree import etc_changes
from bootkit.sysroot.status import chosen


@click.group("etc")
def etc_group() -> None:
    """Inspect a deployment's /etc and the admin's changes to it.

    Each deployment keeps its OS's pristine /etc defaults in usr/etc and its own
    live /etc beside them; a new deployment starts from its defaults plus the
    changes made in the current one.
    """


@etc_group.command("diff")
@click.argument("deployment", required=False)
@click.option("--json", "as_json", is_flag=True, help="Print a JSON list of changes.")
@sysroot_option
def etc_diff(deployment: str | None, as_json: bool, sysroot: Path | None) -> None:
    """Show what was changed in DEPLOYMENT's /etc relative to its defaults.

    DEPLOYMENT is <os>/<id>, <id>, or its serial number; without it, the
    booted deployment, else the default one. One line per path: A (added),
    M (modified), D (deleted); directories end in a slash. These are the
    changes that the next 'bootkit deploy' carries over to the new deployment.
    """
    sr = open_sysroot(sysroot)
    path = sr.tree(chosen(sr, deployment))
    changes = etc_changes(path / "usr" / "etc", path / "etc")
    if as_json:
        click.echo(json.dumps([change.to_json() for change in changes], indent=2))
        return
    for change in changes:
        suffix = "/" if change.type == "dir" else ""
        click.echo(f"{change.letter} {change.path}{suffix}")


COMMANDS = [etc_group]
