"""The one door to external programs: missing programs, failures, and filters through a pipe."""

from __future__ import annotations

import io
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from bootkit.base import process
from bootkit.errors import BootkitError
from bootkit.initramfs import compression, kmod

needs_zstd = pytest.mark.skipif(shutil.which("zstd") is None, reason="zstd not installed")


@pytest.fixture
def spawned(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[subprocess.Popen[bytes]]]:
    """Every process `filtered` starts, to check that none is left behind."""
    started: list[subprocess.Popen[bytes]] = []

    class Recorded(subprocess.Popen[bytes]):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            started.append(self)

    monkeypatch.setattr(subprocess, "Popen", Recorded)
    yield started
    for proc in started:
        assert proc.returncode is not None, "a process was not waited for"
        assert proc.stdout is not None and proc.stdout.closed


@pytest.fixture
def no_programs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A PATH without zstd, lz4 or anything else in /usr/bin."""
    empty = tmp_path / "empty-path"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))


# --- run ----------------------------------------------------------------------------------


def test_run_passes_input_environment_and_directory(tmp_path: Path) -> None:
    proc = process.run(
        ["sh", "-c", 'printf "%s:%s:" "$GREETING" "$(pwd)"; cat'], "greeting",
        input=b"from stdin", env={"GREETING": "hello"}, cwd=tmp_path,
    )
    assert proc.stdout == f"hello:{tmp_path}:from stdin".encode()


def test_run_gives_no_stdin_unless_asked(tmp_path: Path) -> None:
    # A program that asks a question must not wait for an answer.
    proc = process.run(["sh", "-c", "cat; echo done"], "reading stdin")
    assert proc.stdout == b"done\n"


@pytest.mark.usefixtures("no_programs")
def test_missing_program_names_its_package() -> None:
    with pytest.raises(process.MissingProgram) as caught:
        process.run(["zstd", "-d"], "decompressing")
    assert caught.value.message == "the program zstd is not installed"
    assert caught.value.hint == "install the package zstd"
    assert caught.value.program == "zstd"


def test_unknown_missing_program_has_no_package_hint() -> None:
    with pytest.raises(process.MissingProgram) as caught:
        process.run(["bootkit-no-such-program"], "testing")
    assert caught.value.hint is None


def test_failure_says_what_failed_with_the_last_line_of_stderr() -> None:
    script = "echo progress; echo 'first complaint' >&2; echo 'the real reason' >&2; echo >&2; exit 3"
    with pytest.raises(BootkitError) as caught:
        process.run(["sh", "-c", script], "formatting the ESP", hint="check the image")
    assert caught.value.message == "formatting the ESP failed: sh: the real reason"
    assert caught.value.hint == "check the image"


def test_failure_without_output_gives_the_exit_status() -> None:
    with pytest.raises(BootkitError, match=r"\Atesting failed: false: exit status 1\Z"):
        process.run(["false"], "testing")


def test_programs_in_sbin_are_found_without_it_in_path(monkeypatch: pytest.MonkeyPatch) -> None:
    sbin = next((p for p in (Path("/usr/sbin"), Path("/sbin")) if p.is_dir() and any(p.iterdir())),
                None)
    if sbin is None:
        pytest.skip("no sbin directory here")
    name = sorted(p.name for p in sbin.iterdir() if p.is_file())[0]
    monkeypatch.setenv("PATH", "/nonexistent")
    assert Path(process.find_program(name)).parent in (Path("/usr/sbin"), Path("/sbin"))


# --- filtered -----------------------------------------------------------------------------


class CountingReader:
    """What the importer hands in: a reader that counts the bytes read."""

    def __init__(self, data: bytes) -> None:
        self.inner = io.BytesIO(data)
        self.count = 0

    def read(self, size: int = -1, /) -> bytes:
        chunk = self.inner.read(size)
        self.count += len(chunk)
        return chunk


def test_filter_streams_more_than_a_pipe_holds(spawned: list[subprocess.Popen[bytes]]) -> None:
    data = bytes(range(256)) * 8192  # 2 MiB: both pipes fill up many times
    source = CountingReader(data)
    with process.filtered(["tr", "a-z", "A-Z"], "upper-casing", source) as out:
        result = out.read()
    assert result == data.translate(bytes.maketrans(b"abcdefghijklmnopqrstuvwxyz",
                                                    b"ABCDEFGHIJKLMNOPQRSTUVWXYZ"))
    assert source.count == len(data)
    assert len(spawned) == 1 and spawned[0].returncode == 0


def test_filter_output_left_unread_is_drained(spawned: list[subprocess.Popen[bytes]]) -> None:
    # A tar reader stops at the end-of-archive marker; the program must still end cleanly.
    with process.filtered(["cat"], "copying", io.BytesIO(bytes(4 << 20))) as out:
        assert out.read(10) == bytes(10)
    assert spawned[0].returncode == 0


def test_filter_failure_raises_after_the_block(spawned: list[subprocess.Popen[bytes]]) -> None:
    script = "cat >/dev/null; echo 'corrupt frame' >&2; exit 2"
    with (
        pytest.raises(BootkitError) as caught,
        process.filtered(["sh", "-c", script], "decompressing x.tar.zst",
                         io.BytesIO(b"junk" * 1000), hint="the archive is damaged") as out,
    ):
        assert out.read() == b""
    assert caught.value.message == "decompressing x.tar.zst failed: sh: corrupt frame"
    assert caught.value.hint == "the archive is damaged"
    assert spawned[0].returncode == 2


def test_filter_is_killed_when_the_block_raises(spawned: list[subprocess.Popen[bytes]]) -> None:
    started = time.monotonic()
    with (
        pytest.raises(ValueError, match="reader gave up"),
        process.filtered(["sh", "-c", "cat; sleep 60"], "waiting", io.BytesIO(b"x")) as out,
    ):
        assert out.read(1) == b"x"
        raise ValueError("reader gave up")
    assert time.monotonic() - started < 30
    assert spawned[0].returncode is not None and spawned[0].returncode < 0


def test_filter_reports_an_error_reading_its_source(
    spawned: list[subprocess.Popen[bytes]],
) -> None:
    class Failing:
        def read(self, size: int = -1, /) -> bytes:
            raise OSError("disk on fire")

    with (
        pytest.raises(OSError, match="disk on fire"),
        process.filtered(["cat"], "copying", Failing()) as out,
    ):
        assert out.read() == b""
    assert spawned[0].returncode == 0


@pytest.mark.usefixtures("no_programs")
def test_missing_filter_program_starts_nothing(spawned: list[subprocess.Popen[bytes]]) -> None:
    with (
        pytest.raises(process.MissingProgram, match="zstd"),
        process.filtered(["zstd", "-dc"], "decompressing", io.BytesIO(b"")),
    ):
        pass
    assert spawned == []


@needs_zstd
def test_zstd_decompresses_a_stream(tmp_path: Path) -> None:
    data = b"a tar stream, say\n" * 50000
    packed = process.run(["zstd", "-q", "-c"], "compressing", input=data).stdout
    with process.filtered(["zstd", "-dcq"], "decompressing", io.BytesIO(packed)) as out:
        assert out.read() == data
    with (
        pytest.raises(BootkitError, match=r"\Adecompressing failed: zstd: "),
        process.filtered(["zstd", "-dcq"], "decompressing",
                         io.BytesIO(packed[: len(packed) // 2])) as out,
    ):
        out.read()


# --- callers keep hints a user can act on -----------------------------------------------


@pytest.mark.usefixtures("no_programs")
def test_missing_compressor_suggests_installing_it_or_gzip() -> None:
    with pytest.raises(BootkitError) as caught:
        compression.compress(b"data", "zstd")
    assert caught.value.hint is not None
    assert "install the package zstd" in caught.value.hint
    assert "gzip compression" in caught.value.hint
    assert "--" not in str(caught.value)


@pytest.mark.usefixtures("no_programs")
def test_zstd_module_without_zstd_names_the_module_and_package(tmp_path: Path) -> None:
    module = tmp_path / "ext4.ko.zst"
    module.write_bytes(b"(\xb5/\xfd not really")
    with pytest.raises(BootkitError) as caught:
        kmod.read_module(module)
    assert str(module) in caught.value.message
    assert caught.value.hint == "install the package zstd"


@needs_zstd
def test_corrupt_zstd_module_says_which(tmp_path: Path) -> None:
    module = tmp_path / "ext4.ko.zst"
    module.write_bytes(b"(\xb5/\xfd not really")
    with pytest.raises(BootkitError, match=r"decompressing the kernel module .*ext4\.ko\.zst failed: zstd: "):
        kmod.read_module(module)
