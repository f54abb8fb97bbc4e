"""Options that several commands share, each declared once with its range and help."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from bootkit.formats.bootvalues import MAX_TIMEOUT, MAX_TRIES

Decorator = Callable[[Callable[..., Any]], Callable[..., Any]]


def tries_option(text: str, **settings: Any) -> Decorator:
    """--tries: boot counting, 0 (off) to MAX_TRIES (GRUB counts with one branch per try)."""
    return click.option(
        "--tries",
        type=click.IntRange(0, MAX_TRIES),
        help=f"{text} At most {MAX_TRIES}.",
        **settings,
    )


def timeout_option(f: Callable[..., Any]) -> Callable[..., Any]:
    return click.option(
        "--timeout",
        type=click.IntRange(0, MAX_TIMEOUT),
        default=3,
        show_default=True,
        help=f"Boot menu timeout in seconds, 0 to {MAX_TIMEOUT}.",
    )(f)


def kargs_options(text: str) -> Decorator:
    """--karg (repeatable) and --karg-none, passed on as `kargs` and `karg_none`."""

    def add(f: Callable[..., Any]) -> Callable[..., Any]:
        f = click.option(
            "--karg-none",
            is_flag=True,
            help="No kernel arguments of its own, not even those of the current deployment.",
        )(f)
        return click.option(
            "--karg",
            "kargs",
            multiple=True,
            help=f"{text} Printable ASCII without spaces; a double quote only around the "
            'value (name="value").',
        )(f)

    return add


def requested_kargs(kargs: tuple[str, ...], karg_none: bool) -> tuple[str, ...] | None:
    """The kernel arguments asked for: those given, none at all, or None (carry over)."""
    if karg_none and kargs:
        raise click.UsageError("--karg-none and --karg exclude each other")
    if karg_none:
        return ()
    return kargs or None


def image_options(f: Callable[..., Any]) -> Callable[..., Any]:
    """--policy, --registries-d and --unverified: how an OS image's signatures are checked."""
    f = click.option(
        "--unverified", is_flag=True,
        help="Take the image even though no signature is checked: the policy accepts "
        "anything for it, or it demands signatures the image lacks. Recorded, and shown "
        "by 'bootkit status'; later upgrades of the image are taken unverified too.",
    )(f)
    f = click.option(
        "--registries-d", "registries_d", type=click.Path(file_okay=False, path_type=Path),
        help="Where the registries' signature lookaside settings are (default: "
        "/etc/containers/registries.d).",
    )(f)
    return click.option(
        "--policy", type=click.Path(dir_okay=False, path_type=Path),
        help="Signature policy, in containers-policy.json(5) form (default: "
        "/etc/containers/policy.json). It must demand signatures for the image, unless "
        "--unverified.",
    )(f)
