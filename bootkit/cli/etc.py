"""`bootkit etc`: what the admin changed in a deployment's /etc."""

from __future__ import annotations

import json
import os
from pathlib import Path

import click

from bootkit.errors import BootkitError
from bootkit.etcmerge import etc_changes
from bootkit.names import check_name
from bootkit.state import State


def _deploy_root(sysroot: Path) -> Path:
    return sysroot / "bootkit" / "deploy"


def _booted(sysroot: Path) -> str | None:
    """`<os>/<id>` of the deployment the running system is, when it lives in `sysroot`."""
    try:
        cmdline = Path("/proc/cmdline").read_text().split()
    except OSError:
        return None
    for arg in cmdline:
        key, _, value = arg.partition("=")
        parts = value.strip("/").split("/")
        if key != "bootkit" or len(parts) != 5 or parts[:2] != ["bootkit", "deploy"]:
            continue
        ref = f"{parts[2]}/{parts[4]}"
        path = sysroot.joinpath(*parts)
        # The booted deployment is the running root; the same name in another
        # sysroot (an image being built) is a different tree.
        try:
            if os.path.samefile(path, "/"):
                return ref
        except OSError:
            return None
    return None


def _all_refs(sysroot: Path) -> list[str]:
    root = _deploy_root(sysroot)
    if not root.is_dir():
        raise BootkitError(
            f"{sysroot} holds no deployments (no {root})",
            hint="pass --sysroot, or deploy a tree first with 'bootkit deploy'",
        )
    return sorted(
        f"{os_dir.name}/{dep.name}"
        for os_dir in root.iterdir()
        if (os_dir / "deploy").is_dir()
        for dep in (os_dir / "deploy").iterdir()
        if dep.is_dir() and not dep.is_symlink()
    )


def resolve_deployment(sysroot: Path, ref: str | None) -> Path:
    """Pick a deployment by `<os>/<id>`, by `<id>` alone, or (None) the booted, else the default."""
    refs = _all_refs(sysroot)
    if ref is None:
        ref = _booted(sysroot) or State.load(sysroot / "bootkit" / "state.json").default
        if ref is None and len(refs) == 1:
            ref = refs[0]
        if ref is None:
            raise BootkitError(
                "no booted or default deployment to show",
                hint="name one: " + (", ".join(refs) or "there are none"),
            )
    elif "/" in ref:
        os_name, _, dep_id = ref.partition("/")
        check_name(os_name, "os")
        check_name(dep_id, "deployment")
    else:
        check_name(ref, "deployment")
        matches = [r for r in refs if r.split("/", 1)[1] == ref]
        if len(matches) > 1:
            raise BootkitError(
                f"deployment {ref!r} exists for several OSes",
                hint="name it as <os>/<id>: " + ", ".join(matches),
            )
        ref = matches[0] if matches else ref
    if ref not in refs:
        raise BootkitError(
            f"no deployment {ref!r} in {sysroot}",
            hint="'bootkit status' lists the deployments",
        )
    os_name, _, dep_id = ref.partition("/")
    return _deploy_root(sysroot) / os_name / "deploy" / dep_id


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
@click.option(
    "--sysroot",
    type=click.Path(file_okay=False, path_type=Path),
    default="/",
    show_default=True,
    help="The physical root filesystem holding /bootkit.",
)
def etc_diff(deployment: str | None, as_json: bool, sysroot: Path) -> None:
    """Show what was changed in DEPLOYMENT's /etc relative to its defaults.

    DEPLOYMENT is <os>/<id>, or <id> when only one OS has it; without it, the
    booted deployment, else the default one. One line per path: A (added),
    M (modified), D (deleted); directories end in a slash. These are the
    changes that the next 'bootkit deploy' carries over to the new deployment.
    """
    path = resolve_deployment(sysroot, deployment)
    changes = etc_changes(path / "usr" / "etc", path / "etc")
    if as_json:
        click.echo(json.dumps([change.to_json() for change in changes], indent=2))
        return
    for change in changes:
        suffix = "/" if change.type == "dir" else ""
        click.echo(f"{change.letter} {change.path}{suffix}")


COMMANDS = [etc_group]
