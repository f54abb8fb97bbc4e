"""`bootkit kargs`: show or change a deployment's kernel arguments."""

from __future__ import annotations

from pathlib import Path

import click

from bootkit.boot.entries import options_for
from bootkit.cli.common import open_sysroot, print_json, sysroot_option
from bootkit.records.deployment import Deployment
from bootkit.sysroot import kargs as karguments
from bootkit.sysroot.imageargs import KARGS_DIR
from bootkit.sysroot.layout import Sysroot


@click.command("kargs")
@sysroot_option
@click.argument("ident", metavar="[ID]", required=False)
@click.option("--append", "append", multiple=True, metavar="ARG",
              help="Add ARG at the end, unless the admin's list has exactly ARG already.")
@click.option("--delete", "delete", multiple=True, metavar="ARG",
              help="Remove every argument equal to ARG; a bare NAME removes every "
              "argument of that name.")
@click.option("--replace", "replace", multiple=True, metavar="NAME=[OLD=]NEW",
              help="NAME=NEW: give the one argument named NAME the value NEW. "
              "NAME=OLD=NEW: turn NAME=OLD into NAME=NEW (NEW may hold '=').")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def kargs(sysroot: Path | None, ident: str | None, append: tuple[str, ...],
          delete: tuple[str, ...], replace: tuple[str, ...], as_json: bool) -> None:
    """Show or change the kernel arguments of deployment ID (default: the booted
    deployment, else the default).

    A deployment has the image's arguments, from its tree's usr/lib/bootkit/kargs.d,
    and the admin's, given at deploy (--karg) or here. Only the admin's change; they
    carry over to the next deployment, which takes its own image's. The boot entry
    has root=, bootkit=, the image's, then the admin's arguments: where the last
    value of an argument counts, the admin's wins, so '--append NAME=VALUE'
    overrides an argument of the image, which cannot be deleted.

    Changes apply in this order: every --delete, every --replace, every --append.
    Each option may be repeated. The changed list is recorded and the boot entries
    are written again in one atomic switch; reboot to use them. A deployment booted
    as a UKI is refused: its command line is built into the UKI at deploy.
    """
    sr = open_sysroot(sysroot)
    edit = karguments.KargsEdit(delete=delete, replace=replace, append=append)
    if edit:
        before, dep = karguments.change_kargs(sr, ident, edit)
        changed = dep.kargs != before.kargs
    else:
        dep, changed = karguments.chosen(sr, ident), False
    if as_json:
        print_json(_as_json(sr, dep, changed))
        return
    if edit:
        click.echo(f"Changed the kernel arguments of {dep.ref}; reboot to use them" if changed
                   else f"The kernel arguments of {dep.ref} are already so; nothing changed")
    click.echo(f"{dep.ref} ({dep.title} {dep.version})")
    click.echo(f"  image ({KARGS_DIR}): {' '.join(dep.image_kargs) or '(none)'}")
    click.echo(f"  admin: {' '.join(dep.kargs) or '(none)'}")


def _as_json(sr: Sysroot, dep: Deployment, changed: bool) -> dict[str, object]:
    return {
        "id": dep.id,
        "os": dep.os,
        "path": dep.path,
        "uki": dep.uki,
        "image_kargs": list(dep.image_kargs),
        "kargs": list(dep.kargs),
        "options": options_for(sr.config, dep),
        "changed": changed,
    }


COMMANDS = [kargs]
