"""The one door to the external programs bootkit relies on (mtools, e2fsprogs, zstd, ...).

`run` is for a program that takes its whole input and gives its whole output at
once; `run_bounded` for one whose output may be hostile (kept bounded, with a
periodic call for progress while it runs, the exit status left to the caller);
`filtered` streams a file object through a program that reads stdin and writes
stdout (a decompressor), a thread feeding its stdin while the caller reads its
stdout. Either way a missing program is a `MissingProgram` error that names the
Debian package providing it, and a failure of `run` or `filtered` is a
BootkitError saying what failed, with the program's last line of stderr.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import tempfile
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import IO, Protocol

from bootkit.errors import BootkitError

# Which Debian package provides a program, for the hint when it is missing.
PACKAGES: Mapping[str, str] = {
    "cp": "coreutils",
    "debugfs": "e2fsprogs",
    "gzip": "gzip",
    "dumpe2fs": "e2fsprogs",
    "e2fsck": "e2fsprogs",
    "grub-mkimage": "grub-efi-amd64-bin (and grub-common)",
    "lz4": "lz4",
    "mcopy": "mtools",
    "mdir": "mtools",
    "mformat": "mtools",
    "mke2fs": "e2fsprogs",
    "mmd": "mtools",
    "qemu-system-x86_64": "qemu-system-x86",
    "skopeo": "skopeo",
    "systemd-cryptenroll": "systemd (systemd-cryptsetup from Debian 13 on)",
    "unshare": "util-linux",
    "zstd": "zstd",
}

# Filesystem tools live in sbin, which an ordinary user's PATH may lack.
_SBIN = "/usr/sbin:/sbin"
_CHUNK = 1 << 20
_STDERR_TAIL = 64 << 10

Argv = Sequence[str | os.PathLike[str]]


class Readable(Protocol):
    """What `filtered` feeds a program from: a binary file, or a wrapper that counts."""

    def read(self, size: int = -1, /) -> bytes: ...


class MissingProgram(BootkitError):
    """A program bootkit needs is not installed; the hint names its package."""

    def __init__(self, program: str) -> None:
        package = PACKAGES.get(program)
        super().__init__(
            f"the program {program} is not installed",
            hint=f"install the package {package}" if package else None,
        )
        self.program = program


def find_program(name: str) -> str:
    """The path of program `name`, looked up in PATH and then in sbin."""
    path = shutil.which(name) or shutil.which(name, path=_SBIN)
    if path is None:
        raise MissingProgram(name)
    return path


def run(
    argv: Argv,
    what: str,
    *,
    input: bytes | None = None,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
    hint: str | None = None,
) -> subprocess.CompletedProcess[bytes]:
    """Run a program to its end with stdout and stderr captured.

    `what` says what the run is for ("formatting the ESP"): a failure raises a
    BootkitError "<what> failed: <program>: <its last line of stderr>", with
    `hint`. `env` holds variables set on top of bootkit's own environment.
    """
    proc = subprocess.run(
        _resolve(argv),
        input=input,
        # Never wait on a question (mtools asks before overwriting).
        stdin=subprocess.DEVNULL if input is None else None,
        capture_output=True,
        env=_environment(env),
        cwd=cwd,
        check=False,
    )
    if proc.returncode != 0:
        raise _failure(argv, what, proc.returncode, proc.stderr or proc.stdout, hint)
    return proc


def run_bounded(
    argv: Argv,
    what: str,
    *,
    limit: int,
    env: Mapping[str, str] | None = None,
    tick: Callable[[], None] | None = None,
    interval: float = 0.2,
) -> subprocess.CompletedProcess[bytes]:
    """Run a program whose output may be large or hostile (a registry's) to its end.

    Its stdout is kept up to `limit` bytes: a program that writes more is killed and
    BootkitError raised. Its stderr keeps its last 64 KiB. `tick` is called every
    `interval` seconds while it runs, on the caller's thread, so a progress callback
    needs no locking. The exit status is the caller's to judge, so that it can tell
    one failure from another by the message.
    """
    args = _resolve(argv)
    with tempfile.TemporaryFile(prefix="bootkit-stdout-") as out, \
            tempfile.TemporaryFile(prefix="bootkit-stderr-") as err:
        proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=out, stderr=err,
                                env=_environment(env))
        try:
            # Files rather than pipes: nothing to drain, and the size is there to check.
            while not _ended(proc, interval):
                if os.fstat(out.fileno()).st_size > limit:
                    raise _too_much(what, args[0], limit)
                if tick is not None:
                    tick()
        except BaseException:
            proc.kill()
            proc.wait()
            raise
        out.seek(0)
        stdout = out.read(limit + 1)
        if len(stdout) > limit:
            raise _too_much(what, args[0], limit)
        err.seek(max(0, os.fstat(err.fileno()).st_size - _STDERR_TAIL))
        return subprocess.CompletedProcess(args, proc.returncode, stdout, err.read())


def _too_much(what: str, program: str, limit: int) -> BootkitError:
    return BootkitError(f"{what} failed: {Path(program).name} wrote more than {limit} bytes",
                        hint="what it read may be malicious")


def _ended(proc: subprocess.Popen[bytes], interval: float) -> bool:
    try:
        proc.wait(timeout=interval)
    except subprocess.TimeoutExpired:
        return False
    return True


@contextlib.contextmanager
def filtered(
    argv: Argv,
    what: str,
    source: Readable,
    *,
    env: Mapping[str, str] | None = None,
    hint: str | None = None,
) -> Iterator[IO[bytes]]:
    """Run a filter program on `source`; yield its stdout to read from.

    A thread copies `source` into the program's stdin. When the block ends, the
    rest of the output is read and discarded, so the program can finish, and its
    exit status is checked as `run` does. If the block raises, the program is
    killed and the block's exception goes on. An error reading `source` is
    raised once the program has ended.
    """
    args = _resolve(argv)
    with tempfile.TemporaryFile(prefix="bootkit-stderr-") as stderr:
        proc = subprocess.Popen(
            args, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=stderr,
            env=_environment(env),
        )
        assert proc.stdin is not None and proc.stdout is not None
        failures: list[Exception] = []
        pump = threading.Thread(
            target=_pump, args=(source, proc.stdin, failures), name=f"feed {argv[0]}", daemon=True
        )
        pump.start()
        try:
            yield proc.stdout
            while proc.stdout.read(_CHUNK):
                pass
        except BaseException:
            proc.kill()
            raise
        finally:
            proc.stdout.close()
            pump.join()
            returncode = proc.wait()
        if failures:
            raise failures[0]
        if returncode != 0:
            stderr.seek(0)
            raise _failure(argv, what, returncode, stderr.read(), hint)


def _pump(source: Readable, sink: IO[bytes], failures: list[Exception]) -> None:
    try:
        while chunk := source.read(_CHUNK):
            sink.write(chunk)
    except BrokenPipeError:
        pass  # the program stopped reading: its exit status says why
    except Exception as err:  # handed to the caller's thread
        failures.append(err)
    finally:
        with contextlib.suppress(BrokenPipeError):
            sink.close()


def _resolve(argv: Argv) -> list[str]:
    return [find_program(os.fspath(argv[0])), *(os.fspath(arg) for arg in argv[1:])]


def _environment(env: Mapping[str, str] | None) -> dict[str, str] | None:
    return {**os.environ, **env} if env is not None else None


def _failure(
    argv: Argv, what: str, returncode: int, output: bytes, hint: str | None
) -> BootkitError:
    lines = [line for line in output.decode(errors="replace").splitlines() if line.strip()]
    if lines:
        reason = lines[-1].strip()
    elif returncode < 0:
        reason = f"killed by signal {-returncode}"
    else:
        reason = f"exit status {returncode}"
    program = Path(os.fspath(argv[0])).name
    return BootkitError(f"{what} failed: {program}: {reason}", hint=hint)
