"""A staged deployment's records: one in the run directory, two on $BOOT.

`<RUN_DIR>/staged.json` says that a deployment waits to be finalized at shutdown.
It lives in a tmpfs, so a machine that goes down without finalizing forgets it:
what the staged deploy left on disk is then removed at the next boot.

`$BOOT/bootkit/staged.json` marks the same staging on $BOOT, where it outlives a
reboot, so the next boot can say that an update was not applied. It is padded to
`MARKER_SIZE` bytes: when finalizing fails (often because $BOOT is full), the reason
is written into it in place, which needs no free space, and it is renamed to
`finalize-failed.json`. No bootloader reads either file.
"""

from __future__ import annotations

import contextlib
import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

from bootkit import contract
from bootkit.base.files import atomic_write, fsync_dir
from bootkit.errors import BootkitError
from bootkit.records.jsonfields import typed_fields

RUN_RECORD = "staged.json"
BOOT_RECORD_DIR = "bootkit"  # below $BOOT, beside the payloads
MARKER = "staged.json"
FAILURE = "finalize-failed.json"
MARKER_SIZE = 4096
_HINT = "remove it; the next bootkit command removes what a staged deploy left"


@dataclass(frozen=True)
class StagedRecord:
    """A deployment on disk, recorded as in flight, waiting to be listed at shutdown."""

    sysroot: str  # the sysroot's path, as the staging command saw it
    ref: str
    make_default: bool = True
    tries: int | None = None  # its entry's boot tries; None: the sysroot's setting
    locked: bool = False  # finalizing refuses until unlocked (or forced)
    staged_at: float = 0.0
    booted: str | None = None  # the booted deployment's ref when it was staged
    # The deploy named its kernel arguments; else the admin's are taken when it is
    # finalized, from the deployment it follows then.
    kargs_given: bool = False

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2) + "\n"

    @classmethod
    def from_text(cls, text: str, path: Path) -> StagedRecord:
        try:
            data = json.loads(text)
        except ValueError as err:
            raise BootkitError(f"cannot read {path}: {err}", hint=_HINT) from None
        fields = typed_fields(cls, data, path, _HINT)
        if not {"sysroot", "ref"} <= fields.keys():
            raise BootkitError(f"{path}: missing 'sysroot' or 'ref'", hint=_HINT)
        return cls(**fields)

    def is_for(self, sysroot: Path) -> bool:
        with contextlib.suppress(OSError):
            return Path(self.sysroot).resolve() == sysroot.resolve()
        return False


@dataclass(frozen=True)
class FinalizeFailure:
    """Why finalizing a staged deployment failed; kept on $BOOT until forgotten."""

    ref: str
    version: str | None = None
    failed_at: float = 0.0
    reason: str = ""

    @classmethod
    def load(cls, boot: Path) -> FinalizeFailure | None:
        path = boot / BOOT_RECORD_DIR / FAILURE
        try:
            text = path.read_text(errors="replace")
        except FileNotFoundError:
            return None
        try:
            data = json.loads(text)
            return cls(**typed_fields(cls, data, path))
        except (ValueError, TypeError, BootkitError):
            return cls(ref="?", reason=f"unreadable failure record: {text.strip()[:200]}")


def run_record_path() -> Path:
    # Looked up at each call: tests move RUN_DIR.
    return contract.RUN_DIR / RUN_RECORD


def load_run_record() -> StagedRecord | None:
    path = run_record_path()
    try:
        text = path.read_text()
    except FileNotFoundError:
        return None
    return StagedRecord.from_text(text, path)


def save_run_record(record: StagedRecord) -> None:
    path = run_record_path()
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    atomic_write(path, record.to_json(), 0o600)


def remove_run_record() -> None:
    path = run_record_path()
    if path.exists():
        path.unlink()
        fsync_dir(path.parent)


def marker_path(boot: Path) -> Path:
    return boot / BOOT_RECORD_DIR / MARKER


def failure_path(boot: Path) -> Path:
    return boot / BOOT_RECORD_DIR / FAILURE


def _padded(text: str) -> bytes:
    data = text.encode()
    if len(data) > MARKER_SIZE:
        raise ValueError("record longer than the marker")
    # Blanks after the JSON: readers ignore them, and the file keeps its size.
    return data + b" " * (MARKER_SIZE - len(data))


def write_marker(boot: Path, record: StagedRecord) -> None:
    path = marker_path(boot)
    path.parent.mkdir(exist_ok=True)
    atomic_write(path, _padded(record.to_json()))


def load_marker(boot: Path) -> StagedRecord | None:
    path = marker_path(boot)
    try:
        return StagedRecord.from_text(path.read_text(errors="replace"), path)
    except FileNotFoundError:
        return None
    except BootkitError:
        return StagedRecord(sysroot="?", ref="?")  # a marker all the same


def remove_marker(boot: Path) -> None:
    path = marker_path(boot)
    if path.exists() or path.is_symlink():
        path.unlink()
        fsync_dir(path.parent)


def failure_json(failure: FinalizeFailure) -> str:
    """`failure` as JSON that fits the marker, its reason shortened if need be."""
    text = json.dumps(asdict(failure), indent=2) + "\n"
    while len(text.encode()) > MARKER_SIZE:
        failure = FinalizeFailure(failure.ref, failure.version, failure.failed_at,
                                  failure.reason[: len(failure.reason) // 2] + "...")
        text = json.dumps(asdict(failure), indent=2) + "\n"
    return text


def record_failure(boot: Path, failure: FinalizeFailure) -> None:
    """Keep `failure` on $BOOT: written into the marker in place (no new block is
    needed on a full filesystem), then renamed; a fresh file when there is no marker."""
    marker, final = marker_path(boot), failure_path(boot)
    data = _padded(failure_json(failure))
    if not marker.is_file() or marker.is_symlink():
        atomic_write(final, data)
        return
    fd = os.open(marker, os.O_WRONLY | os.O_NOFOLLOW)
    try:
        os.pwrite(fd, data, 0)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.rename(marker, final)
    fsync_dir(final.parent)


def forget_failure(boot: Path) -> bool:
    path = failure_path(boot)
    if not path.exists():
        return False
    path.unlink()
    fsync_dir(path.parent)
    return True
