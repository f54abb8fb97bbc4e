"""`bootkit finalize-staged`: a staged deployment joins the boot menu."""

from __future__ import annotations

import dataclasses
import datetime
import logging
import os
import sys
from pathlib import Path

import click

from bootkit.cli.common import open_sysroot, print_json, sysroot_option
from bootkit.errors import BootkitError
from bootkit.records import staged as records
from bootkit.sysroot import staged
from bootkit.sysroot.finalize import finalize
from bootkit.sysroot.layout import Sysroot

log = logging.getLogger("bootkit")


def _when(stamp: float) -> str:
    return datetime.datetime.fromtimestamp(stamp).strftime("%Y-%m-%d %H:%M:%S")


@click.command("finalize-staged")
@sysroot_option
@click.option("--now", is_flag=True,
              help="Finalize at once, even a deployment staged with 'deploy --lock'.")
@click.option("--unlock", is_flag=True,
              help="Only clear the lock of a deployment staged with 'deploy --lock', so that "
              "the next shutdown finalizes it.")
@click.option("--boot", "at_boot", is_flag=True,
              help="At boot (bootkit-finalize-staged.service): remove what a staged deploy "
              "left when the machine went down without finalizing it. Never fails.")
@click.option("--check", is_flag=True,
              help="Exit 1, printing the reason, when finalizing failed before "
              "(bootkit-finalize-failed.service); else 0.")
@click.option("--forget-failure", is_flag=True,
              help="Remove the record of a failed finalize, once dealt with.")
@click.option("--json", "as_json", is_flag=True,
              help="Print what was done (or, with --check, the failure) as JSON.")
def finalize_staged(sysroot: Path | None, now: bool, unlock: bool, at_boot: bool,
                    check: bool, forget_failure: bool, as_json: bool) -> None:
    """Put the staged deployment (from 'bootkit deploy --stage') into the boot menu.

    bootkit-finalize-staged.service runs this at shutdown: /etc is merged from the
    booted deployment as it is then, and $BOOT switches to the new menu in one
    step. Exit 0 when nothing is staged. A locked deployment is refused (exit 1)
    unless --now; at shutdown (when systemd stops the unit) it is discarded.

    When finalizing fails, nothing switches; the reason is kept on $BOOT until the
    next successful update or --forget-failure, and 'bootkit status' shows it.
    """
    modes = [n for n, on in (("--now", now), ("--unlock", unlock), ("--boot", at_boot),
                             ("--check", check), ("--forget-failure", forget_failure)) if on]
    if len(modes) > 1:
        raise BootkitError(f"{' and '.join(modes)} do not go together",
                           hint="give one of them; see 'bootkit finalize-staged --help'")
    sr = open_sysroot(sysroot)
    if check:
        _check(sr.boot_path, as_json)
    elif at_boot:
        _at_boot(sr, as_json)
    elif forget_failure:
        forgotten = staged.forget_failure(sr)
        _say(as_json, {"forgotten": forgotten},
             "Forgot the failed finalize." if forgotten else "No failed finalize is recorded.")
    elif unlock:
        rec = staged.unlock(sr)
        _say(as_json, {"unlocked": rec.ref if rec else None},
             f"Unlocked {rec.ref}; the next shutdown finalizes it." if rec
             else "Nothing is staged.")
    else:
        # systemd sets SERVICE_RESULT for a unit's stop commands only: this is shutdown.
        dep = finalize(sr, now=now, at_shutdown="SERVICE_RESULT" in os.environ)
        _say(as_json, {"finalized": dep.ref if dep else None},
             f"Finalized {dep.ref} ({dep.title} {dep.version})." if dep
             else "Nothing is staged.")


def _say(as_json: bool, data: dict[str, object], text: str) -> None:
    if as_json:
        print_json(data)
    else:
        click.echo(text)


def _check(boot: Path, as_json: bool) -> None:
    failure = records.FinalizeFailure.load(boot)
    if as_json:
        print_json({"finalize_failure": dataclasses.asdict(failure) if failure else None})
    elif failure is not None:
        click.echo(
            f"bootkit: finalizing the staged deployment {failure.ref} failed at "
            f"{_when(failure.failed_at)}: {failure.reason}; the previous deployment is still "
            "the default", err=True,
        )
        click.echo("bootkit: hint: deal with the cause, deploy again, then 'bootkit "
                   "finalize-staged --forget-failure'", err=True)
    if failure is not None:
        sys.exit(1)


def _at_boot(sr: Sysroot, as_json: bool) -> None:
    try:
        ref = staged.cleanup_at_boot(sr)
    except (BootkitError, OSError) as err:
        # Never fails the boot: the next command removes leftovers as well.
        log.warning("cannot remove what a staged deploy left: %s", err)
        ref = None
    _say(as_json, {"discarded": ref}, f"Removed {ref}, staged but never finalized." if ref
         else "Nothing left by a staged deploy.")


COMMANDS = [finalize_staged]
