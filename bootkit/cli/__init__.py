"""The `bootkit` command line: thin wrappers over the library, one module per command family."""

from __future__ import annotations

import importlib
import sys

import click

from bootkit import __version__
from bootkit.errors import BootkitError


class _Group(click.Group):
    """Turns a BootkitError from any command into one line on stderr and exit status 1."""

    def invoke(self, ctx: click.Context) -> object:
        try:
            return super().invoke(ctx)
        except BootkitError as err:
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


# Each command family lives in its own module, which lists its commands in COMMANDS.
_FAMILIES = ("deployments", "etc", "initramfs", "image", "uki")


def _register() -> None:
    for family in _FAMILIES:
        module = importlib.import_module(f"bootkit.cli.{family}")
        for command in module.COMMANDS:
            main.add_command(command)


_register()
