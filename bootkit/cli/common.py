"""Options and helpers shared by command families."""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import click

from bootkit.records.deployment import ImageOrigin
from bootkit.records.staged import FinalizeFailure
from bootkit.sysroot.booted import BootedSysroot, default_sysroot
from bootkit.sysroot.layout import Sysroot
from bootkit.sysroot.status import DeploymentStatus, StagedStatus


def sysroot_option(f: Callable[..., Any]) -> Callable[..., Any]:
    return click.option(
        "--sysroot",
        type=click.Path(file_okay=False, path_type=Path),
        default=None,
        help="The physical root filesystem holding /bootkit (default: / or, in a booted "
        "deployment, /sysroot).",
    )(f)


def open_sysroot(path: Path | None) -> Sysroot:
    # Inside a booted deployment /sysroot is read-only for everyone; a change (it
    # takes the lock) first makes it writable for this process alone.
    return BootedSysroot(path if path is not None else default_sysroot())


def print_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, sort_keys=False))


def warn(message: str) -> None:
    click.echo(f"bootkit: warning: {message}", err=True)


@contextmanager
def byte_progress(
    label: str, total: Callable[[], int], shown: bool = True
) -> Iterator[Callable[[int], None]]:
    """A progress bar on stderr when it is a terminal and `shown` (not for --json, whose
    readers want results only); silent otherwise.

    `total` is called only for a bar: sizing a source tree walks all of it.
    """
    if not shown or not sys.stderr.isatty() or os.environ.get("BOOTKIT_NO_PROGRESS"):
        yield lambda n: None
        return
    with click.progressbar(length=max(total(), 1), label=label, file=sys.stderr,
                           item_show_func=lambda shown: shown) as bar:
        yield _Rate(bar.update).update


class _Rate:
    """Bytes so far and the rate since the start, shown beside the bar."""

    def __init__(self, advance: Callable[[int, str], None]) -> None:
        self.advance = advance
        self.start = time.monotonic()
        self.done = 0

    def update(self, n: int) -> None:
        self.done += n
        seconds = max(time.monotonic() - self.start, 1e-3)
        self.advance(n, f"{self.done / (1 << 20):.1f} MiB, {self.done / seconds / (1 << 20):.1f} MiB/s")


def status_json(s: DeploymentStatus) -> dict[str, Any]:
    """One deployment as `status --json` and `deploy --json` print it."""
    d = s.deployment
    return {
        "id": d.id,
        "os": d.os,
        "version": d.version,
        "title": d.title,
        "kernel_version": d.kernel_version,
        "default": s.default,
        "booted": s.booted,
        "pinned": d.pinned,
        "entry": s.entry,
        # Boot assessment: "good", "indeterminate" (tries_left more tries) or "bad".
        "boot": s.counter.state,
        "tries_left": s.counter.left,
        "tries_done": s.counter.done,
        "path": d.path,
        "kargs": list(d.kargs),  # the admin's
        "image_kargs": list(d.image_kargs),  # those the deployed image ships
        "payload": d.payload,  # its directory under $BOOT/bootkit/<os>/
        "created": d.created,
        "content_digest": d.content_digest or None,  # None in metadata older than it
        "image": image_json(d.image) if d.image else None,  # None: not from an OS image
    }


def image_json(origin: ImageOrigin) -> dict[str, Any]:
    """The OS image a deployment came from, as `status --json` prints it."""
    return {
        "reference": origin.reference,
        "manifest_digest": origin.manifest_digest,
        "config_digest": origin.config_digest,
        "version": origin.version or None,
        "verified": origin.verified,
        "policy": origin.policy or None,
    }


def staged_json(s: StagedStatus) -> dict[str, Any]:
    """The staged deployment as `status --json` and `deploy --json` print it."""
    return {"ref": s.ref, "path": s.path, "version": s.version, "title": s.title,
            "locked": s.locked, "staged_at": s.staged_at,
            "image": image_json(s.image) if s.image else None}


def failure_json(f: FinalizeFailure) -> dict[str, Any]:
    """A failed finalize as `status --json` prints it."""
    return {"ref": f.ref, "version": f.version, "failed_at": f.failed_at, "reason": f.reason}
