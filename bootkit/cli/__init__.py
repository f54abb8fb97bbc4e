"""The `bootkit` command line: thin wrappers over the library, one module per command family."""

from __future__ import annotations

import importlib
import logging
import sys
from typing import NoReturn

import click

from bootkit import __version__
from bootkit.errors import BootkitError, from_os_error

# Command name -> the module (bootkit.cli.<module>) that defines it. A module is
# imported only when one of its commands runs, so `bootkit status` does not pay for
# cryptography or the ELF reader. tests/test_cli.py checks this table against each
# module's COMMANDS list.
COMMAND_MODULES = {
    "init": "init",
    "deploy": "deploy",
    "upgrade": "upgrade",
    "switch": "upgrade",
    "finalize-staged": "finalize",
    "status": "status",
    "fsck": "fsck",
    "kargs": "kargs",
    "mark-good": "manage",
    "rollback": "manage",
    "set-default": "manage",
    "pin": "manage",
    "unpin": "manage",
    "undeploy": "manage",
    "cleanup": "manage",
    "bootloader": "bootloader",
    "etc": "etc",
    "initramfs": "initramfs",
    "dracut": "initramfs",
    "systemd": "units",
    "image": "image",
    "uki": "uki",
    "sign": "uki",
    "keys": "uki",
    "tpm": "tpm",
}


class _Group(click.Group):
    """Loads commands on demand, and turns a BootkitError or an OSError from any of
    them into one line on stderr (plus a hint) and exit status 1.

    Any other exception is a bug in bootkit and keeps its traceback.
    """

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(COMMAND_MODULES)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        family = COMMAND_MODULES.get(cmd_name)
        if family is None:
            return None
        module = importlib.import_module(f"bootkit.cli.{family}")
        return next((c for c in module.COMMANDS if c.name == cmd_name), None)

    def invoke(self, ctx: click.Context) -> object:
        _log_to_stderr()
        try:
            return super().invoke(ctx)
        except BootkitError as err:
            _fail(err)
        except OSError as err:
            _fail(from_os_error(err))


class _StderrHandler(logging.Handler):
    """What the library logs, as `bootkit:` lines on stderr.

    It looks stderr up at each message, so output captured by a caller (a test's
    CliRunner) receives it too.
    """

    def emit(self, record: logging.LogRecord) -> None:
        kind = "warning: " if record.levelno >= logging.WARNING else ""
        click.echo(f"bootkit: {kind}{record.getMessage()}", err=True)


def _log_to_stderr() -> None:
    logger = logging.getLogger("bootkit")
    if not any(isinstance(h, _StderrHandler) for h in logger.handlers):
        logger.addHandler(_StderrHandler())
        logger.setLevel(logging.INFO)


def _fail(err: BootkitError) -> NoReturn:
    click.echo(f"bootkit: {err.message}", err=True)
    if err.hint:
        click.echo(f"bootkit: hint: {err.hint}", err=True)
    sys.exit(1)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="bootkit")
def main() -> None:
    """Keep several immutable OS trees side by side and boot any of them.

    A deployment is a complete root tree under /bootkit/deploy/<os>/deploy/<id>.
    Each one gets a Boot Loader Specification entry (systemd-boot) and a GRUB
    menu entry; switching the default is one atomic step, and so is rolling back.
    """
