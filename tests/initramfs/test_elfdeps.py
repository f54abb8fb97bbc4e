"""Shared-library closure from ELF headers, checked against what the real loader reports."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from bootkit.errors import BootkitError
from bootkit.initramfs import elfdeps

needs_gcc = pytest.mark.skipif(shutil.which("gcc") is None, reason="gcc not installed")


def _ldd(program: Path) -> set[str]:
    """Real paths of everything the dynamic loader maps for `program` (ldd is the oracle here)."""
    out = subprocess.run(["ldd", str(program)], capture_output=True, text=True, check=True).stdout
    paths = set()
    for line in out.splitlines():
        match = re.search(r"(?:=>\s*)?(/\S+)\s+\(0x", line)
        if match:
            paths.add(os.path.realpath(match.group(1)))
    return paths


def _dynamic_programs() -> list[Path]:
    candidates = [Path("/bin/ls"), Path("/usr/bin/python3"), Path("/usr/bin/qemu-system-x86_64")]
    return [
        p for p in candidates if p.is_file() and elfdeps.read_elf(p) and elfdeps.read_elf(p).needed
    ]


@pytest.mark.skipif(shutil.which("ldd") is None, reason="ldd not installed")
@pytest.mark.parametrize("program", _dynamic_programs(), ids=str)
def test_closure_matches_the_dynamic_loader(program: Path) -> None:
    found = elfdeps.runtime_files([program])
    assert found[0] == program
    assert {os.path.realpath(p) for p in found[1:]} == _ldd(program)


def test_interpreter_is_included_under_its_own_path() -> None:
    program = Path("/bin/ls")
    info = elfdeps.read_elf(program)
    if info is None or info.interpreter is None:
        pytest.skip("/bin/ls is not a dynamic ELF program here")
    assert Path(info.interpreter) in elfdeps.runtime_files([program])


def test_static_program_needs_nothing() -> None:
    busybox = Path("/bin/busybox")
    info = elfdeps.read_elf(busybox) if busybox.is_file() else None
    if info is None or info.needed or info.interpreter:
        pytest.skip("no static /bin/busybox")
    assert elfdeps.runtime_files([busybox]) == [busybox]


def test_script_is_copied_alone(tmp_path: Path) -> None:
    script = tmp_path / "hello"
    script.write_text("#!/bin/sh\necho hello\n")
    assert elfdeps.read_elf(script) is None
    assert elfdeps.runtime_files([script]) == [script]


def test_missing_program_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(BootkitError, match="does not exist"):
        elfdeps.runtime_files([tmp_path / "nope"])


def test_ld_so_conf_includes_are_followed(tmp_path: Path) -> None:
    (tmp_path / "conf.d").mkdir()
    (tmp_path / "conf.d/b.conf").write_text("/opt/b\n")
    (tmp_path / "conf.d/a.conf").write_text("# comment\n/opt/a  # trailing\n\n")
    (tmp_path / "ld.so.conf").write_text("/opt/first\ninclude conf.d/*.conf\nhwcap 0 nosegneg\n")
    assert elfdeps.ld_so_conf_dirs(tmp_path / "ld.so.conf") == [
        Path("/opt/first"),
        Path("/opt/a"),
        Path("/opt/b"),
    ]


def _compile(tmp_path: Path, runpath_flag: str) -> Path:
    (tmp_path / "lib").mkdir()
    (tmp_path / "foo.c").write_text("int foo(void) { return 42; }\n")
    (tmp_path / "main.c").write_text("int foo(void);\nint main(void) { return foo() - 42; }\n")
    subprocess.run(
        [
            "gcc",
            "-shared",
            "-fPIC",
            "-o",
            tmp_path / "lib/libfoo.so",
            tmp_path / "foo.c",
            "-Wl,-soname,libfoo.so",
        ],
        check=True,
    )
    program = tmp_path / "main"
    subprocess.run(
        [
            "gcc",
            "-o",
            program,
            tmp_path / "main.c",
            f"-L{tmp_path / 'lib'}",
            "-lfoo",
            f"-Wl,-rpath,$ORIGIN/lib,{runpath_flag}",
        ],
        check=True,
    )
    subprocess.run([program], check=True)  # the loader agrees the library is found
    return program


@needs_gcc
@pytest.mark.parametrize("flag", ["--enable-new-dtags", "--disable-new-dtags"])
def test_origin_relative_runpath_and_rpath(tmp_path: Path, flag: str) -> None:
    program = _compile(tmp_path, flag)
    info = elfdeps.read_elf(program)
    assert info is not None
    assert (info.runpath if flag == "--enable-new-dtags" else info.rpath) == ("$ORIGIN/lib",)
    files = elfdeps.runtime_files([program])
    assert tmp_path / "lib/libfoo.so" in [Path(os.path.normpath(p)) for p in files]


@needs_gcc
def test_unresolvable_library_is_an_error(tmp_path: Path) -> None:
    program = _compile(tmp_path, "--enable-new-dtags")
    (tmp_path / "lib/libfoo.so").unlink()
    with pytest.raises(BootkitError, match=r"libfoo\.so"):
        elfdeps.runtime_files([program])
