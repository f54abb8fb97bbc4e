"""Building bootkit's initramfs and reading images segment by segment, as the kernel does."""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
from pathlib import Path

import pytest
from click.testing import CliRunner
from test_kmod import kernel_modules_dir

from bootkit.cli import main
from bootkit.errors import BootkitError
from bootkit.initramfs import (
    DEFAULT_MODULES,
    build_initramfs,
    compression,
    cpio,
    elfdeps,
    kmod,
    read_image,
    read_segments,
)
from bootkit.initramfs.builder import HOOK, MODULE_LIST
from bootkit.initramfs.reader import members as final_members

REPO = Path(__file__).resolve().parents[2]
KVER = "6.1.0-test"
BUSYBOX = Path("/bin/busybox")

needs_busybox = pytest.mark.skipif(not BUSYBOX.is_file(), reason="no /bin/busybox")


def _tool(name: str) -> pytest.MarkDecorator:
    return pytest.mark.skipif(shutil.which(name) is None, reason=f"{name} not installed")


@pytest.fixture
def stand_in_busybox(tmp_path: Path) -> Path:
    """A small file in busybox's place, where only packing and unpacking are tested."""
    path = tmp_path / "busybox"
    path.write_bytes(b"#!/bin/sh\n" + bytes(range(256)) * 64)
    path.chmod(0o755)
    return path


@pytest.fixture
def no_modules(tmp_path: Path) -> Path:
    directory = tmp_path / "lib/modules" / KVER
    directory.mkdir(parents=True)
    return directory


def _build(
    tmp_path: Path, modules_dir: Path, **kwargs: object
) -> tuple[Path, dict[str, cpio.Member]]:
    out = tmp_path / "initrd.img"
    build_initramfs(out, KVER, modules_dir, modules=kwargs.pop("modules", ()), **kwargs)
    return out, final_members(read_image(out))


@needs_busybox
def test_image_holds_init_busybox_and_hook(tmp_path: Path, no_modules: Path) -> None:
    out, files = _build(tmp_path, no_modules)

    assert files["init"].data == (REPO / "bootkit/data/init").read_bytes()
    assert stat.S_IMODE(files["init"].mode) == 0o755
    assert files["bin/busybox"].data == BUSYBOX.read_bytes()
    hook = files[HOOK]
    assert hook.data == (REPO / "dracut/90bootkit/bootkit-prepare-root.sh").read_bytes()
    assert stat.S_IMODE(hook.mode) == 0o755
    console = files["dev/console"]
    assert (console.kind, console.rdev) == ("char", (5, 1))
    assert files["etc/bootkit/kernel-release"].data == f"{KVER}\n".encode()
    for directory in ("proc", "sys", "dev", "run", "sysroot", "usr/bin", "sbin"):
        assert files[directory].kind == "dir", directory
    # Every parent directory precedes its children, or the kernel cannot create them.
    seen: set[str] = set()
    for member in read_image(out)[0].members:
        parent = str(Path(member.name).parent)
        assert parent == "." or parent in seen, member.name
        seen.add(member.name)


@pytest.mark.parametrize("method", compression.COMPRESSORS)
def test_every_compression_reads_back(
    tmp_path: Path, no_modules: Path, stand_in_busybox: Path, method: str
) -> None:
    if method in ("zstd", "lz4") and shutil.which(method) is None:
        pytest.skip(f"{method} not installed")
    out, files = _build(tmp_path, no_modules, compress=method, busybox=stand_in_busybox)
    segments = read_image(out)
    assert [s.compression for s in segments] == [method]
    assert segments[0].length == out.stat().st_size
    assert files["bin/busybox"].data == stand_in_busybox.read_bytes()


@_tool("cpio")
@pytest.mark.parametrize(
    ("method", "unpack"),
    [
        ("gzip", ["gzip", "-dc"]),
        ("xz", ["xz", "-dc"]),
        ("zstd", ["zstd", "-dc"]),
        ("lz4", ["lz4", "-dc"]),
    ],
)
def test_standard_tools_unpack_our_image(
    tmp_path: Path, no_modules: Path, stand_in_busybox: Path, method: str, unpack: list[str]
) -> None:
    if shutil.which(unpack[0]) is None:
        pytest.skip(f"{unpack[0]} not installed")
    out, files = _build(tmp_path, no_modules, compress=method, busybox=stand_in_busybox)
    archive = subprocess.run([*unpack, str(out)], capture_output=True, check=True).stdout
    listing = subprocess.run(
        ["cpio", "-t", "--quiet"], input=archive, capture_output=True, check=True
    ).stdout.decode()
    assert sorted(listing.split()) == sorted(files)


@needs_busybox
def test_binaries_come_with_their_libraries(tmp_path: Path, no_modules: Path) -> None:
    program = Path("/bin/ls")
    info = elfdeps.read_elf(program)
    if info is None or not info.needed:
        pytest.skip("/bin/ls is not dynamically linked here")
    _, files = _build(tmp_path, no_modules, binaries=[program])
    for needed in elfdeps.runtime_files([program]):
        assert files[str(needed).lstrip("/")].data == needed.read_bytes(), needed
    assert info.interpreter.lstrip("/") in files


@needs_busybox
def test_failed_build_leaves_the_old_image(tmp_path: Path, no_modules: Path) -> None:
    out = tmp_path / "initrd.img"
    out.write_bytes(b"old image")
    with pytest.raises(BootkitError, match="no_such_module"):
        build_initramfs(out, KVER, no_modules, modules=["no_such_module"])
    assert out.read_bytes() == b"old image"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["initrd.img", "lib"]


def test_unknown_compression_is_refused(tmp_path: Path, no_modules: Path) -> None:
    with pytest.raises(BootkitError, match="compression"):
        build_initramfs(tmp_path / "x", KVER, no_modules, modules=(), compress="brotli")
    assert not (tmp_path / "x").exists()


def test_missing_busybox_is_explained(tmp_path: Path, no_modules: Path) -> None:
    with pytest.raises(BootkitError, match="busybox"):
        build_initramfs(tmp_path / "x", KVER, no_modules, modules=(), busybox=tmp_path / "none")


# Reading images made of several segments.


def _archive(*names: str) -> bytes:
    return cpio.archive_bytes([cpio.regular_file(n, n.encode() * 100) for n in names])


def _pad(data: bytes, to: int = 512) -> bytes:
    return data + b"\0" * (-len(data) % to)


def test_early_uncompressed_then_compressed_segments() -> None:
    early = _pad(_archive("kernel/x86/microcode/GenuineIntel.bin"))
    main_gz = compression.compress(_archive("init", "bin/sh"), "gzip")
    extra_xz = compression.compress(_archive("etc/extra"), "xz")
    image = early + _pad(main_gz, 4) + extra_xz

    segments = read_segments(image)

    assert [s.compression for s in segments] == ["none", "gzip", "xz"]
    assert [[m.name for m in s.members] for s in segments] == [
        ["kernel/x86/microcode/GenuineIntel.bin"],
        ["init", "bin/sh"],
        ["etc/extra"],
    ]
    assert segments[1].offset == len(early)
    assert segments[1].length == len(main_gz)


@_tool("zstd")
def test_zstd_frames_are_measured_exactly() -> None:
    first = compression.compress(_archive("a"), "zstd")
    second = compression.compress(_archive("b"), "zstd")
    # A skippable frame (magic 0x184D2A5x) between frames is part of the stream.
    skippable = (0x184D2A50).to_bytes(4, "little") + (5).to_bytes(4, "little") + b"hello"
    stream = first + skippable + second
    image = stream + b"\0" * 8 + _archive("plain")
    assert compression.zstd_stream_length(memoryview(image)) == len(stream)
    segments = read_segments(image)
    assert [s.compression for s in segments] == ["zstd", "none"]
    assert [m.name for m in segments[0].members] == ["a", "b"]


@_tool("lz4")
def test_lz4_legacy_stream_with_several_blocks() -> None:
    # More than one 8 MiB legacy block, and incompressible, so blocks are full size.
    payload = os.urandom(9 << 20)
    stream = compression.compress(cpio.archive_bytes([cpio.regular_file("big", payload)]), "lz4")
    image = stream + _archive("after")
    segments = read_segments(image)
    assert [s.compression for s in segments] == ["lz4", "none"]
    assert segments[0].members[0].data == payload


def test_garbage_is_an_error() -> None:
    with pytest.raises(BootkitError, match="unrecognised"):
        read_segments(b"this is not an initramfs")
    with pytest.raises(BootkitError, match="truncated"):
        read_segments(compression.compress(_archive("x"), "gzip")[:-10])


def test_later_segments_replace_earlier_files() -> None:
    image = _archive("etc/x") + compression.compress(
        cpio.archive_bytes([cpio.regular_file("etc/x", b"new")]), "gzip"
    )
    assert final_members(read_segments(image))["etc/x"].data == b"new"


# A real kernel.


@needs_busybox
def test_real_kernel_image_loads_dependencies_first(tmp_path: Path, test_kernel: Path) -> None:
    directory = kernel_modules_dir(test_kernel)
    out = tmp_path / "initrd.img"
    result = build_initramfs(out, directory.name, test_kernel)
    files = final_members(read_image(out))

    lines = files[MODULE_LIST].data.decode().splitlines()
    loaded: list[str] = []
    tree = kmod.ModuleTree(directory)
    for line in lines:
        name, path, *_ = line.split()
        module = tree.module(name)
        assert set(module.depends) <= set(loaded), f"{name} before {module.depends}"
        assert files[path.lstrip("/")].data[:4] == b"\x7fELF"
        loaded.append(name)
    assert set(DEFAULT_MODULES) <= set(loaded)
    assert "crc32c_generic" in loaded and loaded.index("crc32c_generic") < loaded.index("ext4")
    assert list(result.modules) == loaded


# The command line.


def test_cli_build_and_inspect(tmp_path: Path, no_modules: Path, stand_in_busybox: Path) -> None:
    runner = CliRunner()
    out = tmp_path / "img"
    built = runner.invoke(
        main,
        [
            "initramfs",
            "build",
            "--kver",
            KVER,
            "--modules-dir",
            str(tmp_path / "lib/modules"),
            "--no-default-modules",
            "-o",
            str(out),
            "--compress",
            "xz",
            "--json",
            "--busybox",
            str(stand_in_busybox),
        ],
    )
    assert built.exit_code == 0, built.output
    report = json.loads(built.output)
    assert (report["compression"], report["size"]) == ("xz", out.stat().st_size)

    inspected = runner.invoke(main, ["initramfs", "inspect", str(out), "--json"])
    assert inspected.exit_code == 0, inspected.output
    listing = json.loads(inspected.output)
    (segment,) = listing["segments"]
    assert segment["compression"] == "xz"
    assert sorted(m["name"] for m in segment["members"]) == sorted(report["files"])
    by_name = {m["name"]: m for m in segment["members"]}
    assert by_name["init"]["mode"] == "0755"
    assert by_name["dev/console"]["rdev"] == [5, 1]

    text = runner.invoke(main, ["initramfs", "inspect", str(out)])
    assert "segment 1: xz-compressed cpio" in text.output
    assert "-rwxr-xr-x" in text.output and " init\n" in text.output


def test_cli_reports_errors_in_one_line(tmp_path: Path) -> None:
    bad = tmp_path / "bad.img"
    bad.write_bytes(b"garbage")
    result = CliRunner().invoke(main, ["initramfs", "inspect", str(bad)])
    assert result.exit_code == 1
    assert result.output.startswith("bootkit: ")


@_tool("shellcheck")
def test_init_is_shellcheck_clean() -> None:
    subprocess.run(["shellcheck", str(REPO / "bootkit/data/init")], check=True)
