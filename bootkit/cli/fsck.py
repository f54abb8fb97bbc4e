"""`bootkit fsck`: check the sysroot and $BOOT against what bootkit recorded, and repair."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import NoReturn

import click

from bootkit.cli.common import open_sysroot, print_json, sysroot_option
from bootkit.errors import BootkitError, from_os_error
from bootkit.sysroot.fsck import Problem, Report, fsck

# Exit status when the check could not run at all; 0 and 1 are the report's.
COULD_NOT_RUN = 2


@click.command("fsck")
@sysroot_option
@click.option("--repair", is_flag=True, help="Fix what can be fixed; never deletes user data.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def fsck_command(sysroot: Path | None, repair: bool, as_json: bool) -> None:
    """Check deployments, boot files, entries and stored objects against their records.

    Every stored object is checked against its digest, every kernel and initramfs on
    $BOOT against the digest recorded when it was deployed, and the state, metadata,
    entries and deployment trees against each other. With --repair, boot files are
    copied again from the deployments' trees, lost records rebuilt from the disk and
    leftovers of interrupted commands removed; what cannot be explained is kept.

    Exit status: 0 clean, 1 problems found (and, with --repair, repaired as far as
    possible), 2 the check could not run.
    """
    try:
        report = fsck(open_sysroot(sysroot), repair)
    except BootkitError as err:
        _could_not_run(err)
    except OSError as err:
        _could_not_run(from_os_error(err))
    if as_json:
        print_json(report.to_json())
    else:
        _print(report)
    sys.exit(report.exit_code)


def _could_not_run(err: BootkitError) -> NoReturn:
    click.echo(f"bootkit: {err.message}", err=True)
    if err.hint:
        click.echo(f"bootkit: hint: {err.hint}", err=True)
    sys.exit(COULD_NOT_RUN)


def _print(report: Report) -> None:
    checked = ", ".join(f"{n} {what}" for what, n in report.checked.items())
    click.echo(f"Checked {checked}.")
    for p in report.problems:
        click.echo(_line(p))
    if not report.problems:
        click.echo("No problems found.")
        return
    left = len(report.unrepaired)
    if report.repair:
        click.echo(f"{len(report.problems)} problem(s), {left} not (fully) repaired.")
    else:
        click.echo(f"{len(report.problems)} problem(s); 'bootkit fsck --repair' fixes what it can.")


def _line(p: Problem) -> str:
    line = f"{p.kind}: {p.subject}: {p.message}"
    if p.repaired:
        line += f"\n    repaired: {p.repaired}"
    if p.hint:
        line += f"\n    to do: {p.hint}"
    return line


COMMANDS = [fsck_command]
