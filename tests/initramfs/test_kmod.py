"""Module load order from .modinfo: synthetic modules for the rules, a real kernel against depmod."""

from __future__ import annotations

import gzip
import lzma
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from bootkit.errors import BootkitError
from bootkit.initramfs import kmod

KVER = "6.1.0-test"

needs_objcopy = pytest.mark.skipif(shutil.which("objcopy") is None, reason="binutils not installed")


def make_module(path: Path, **fields: str | list[str]) -> Path:
    """An ELF object whose only content is a .modinfo section, as modinfo(8) reads it."""
    fields.setdefault("vermagic", f"{KVER} SMP preempt mod_unload modversions")
    info = b"".join(
        f"{key}={value}\0".encode()
        for key, values in fields.items()
        for value in ([values] if isinstance(values, str) else values)
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    raw = path.with_name(path.name + ".modinfo")
    raw.write_bytes(info)
    elf = path.with_name(path.name + ".elf")
    subprocess.run(
        [
            "objcopy",
            "-I",
            "binary",
            "-O",
            "elf64-x86-64",
            "-B",
            "i386:x86-64",
            "--rename-section",
            ".data=.modinfo",
            raw.name,
            elf.name,
        ],
        cwd=path.parent,
        check=True,
    )
    raw.unlink()
    data = elf.read_bytes()
    elf.unlink()
    if path.name.endswith(".xz"):
        data = lzma.compress(data, check=lzma.CHECK_CRC32)
    elif path.name.endswith(".gz"):
        data = gzip.compress(data)
    elif path.name.endswith(".zst"):
        data = subprocess.run(
            ["zstd", "-q", "-c"], input=data, capture_output=True, check=True
        ).stdout
    path.write_bytes(data)
    return path


@pytest.fixture
def modules(tmp_path: Path) -> Path:
    """fs_a needs lib_b and lib_c (lib_b needs lib_c) and soft-wants crypto-x, which
    x_generic and x-accel provide; blk-dev is plain; builtin_y is built in."""
    root = tmp_path / "lib/modules" / KVER
    make_module(root / "kernel/fs/fs_a.ko", depends="lib_b,lib_c", softdep="pre: crypto-x")
    make_module(root / "kernel/lib/lib_b.ko", depends="lib_c")
    make_module(root / "kernel/lib/lib_c.ko", depends="")
    make_module(root / "kernel/crypto/x_generic.ko", alias=["crypto-x", "x"])
    make_module(root / "kernel/arch/x86/crypto/x-accel.ko", alias=["crypto-x", "x"])
    make_module(root / "kernel/drivers/blk-dev.ko", alias="blkalias")
    (root / "modules.builtin").write_text("kernel/lib/builtin_y.ko\n")
    (root / "modules.builtin.modinfo").write_bytes(b"builtin_y.alias=why-alias\0")
    return root


def names(order: kmod.LoadOrder) -> list[str]:
    return [m.name for m in order.modules]


@needs_objcopy
def test_dependencies_load_first(modules: Path) -> None:
    order = kmod.load_order(kmod.ModuleTree(modules), ["fs_a"], KVER)
    got = names(order)
    assert sorted(got) == ["fs_a", "lib_b", "lib_c", "x_accel", "x_generic"]
    assert got.index("lib_c") < got.index("lib_b") < got.index("fs_a")
    assert got.index("x_generic") < got.index("fs_a")
    assert got.index("x_accel") < got.index("fs_a")
    # Providers reached only through the soft dependency may fail to load.
    assert order.optional == {"x_accel", "x_generic"}


@needs_objcopy
def test_module_read_by_its_dashed_file_name_and_alias(modules: Path) -> None:
    tree = kmod.ModuleTree(modules)
    assert names(kmod.load_order(tree, ["blk-dev"])) == ["blk_dev"]
    assert names(kmod.load_order(tree, ["blkalias"])) == ["blk_dev"]
    assert tree.module("blk_dev").relpath.as_posix() == "kernel/drivers/blk-dev.ko"


@needs_objcopy
def test_builtin_modules_and_aliases_need_nothing(modules: Path) -> None:
    order = kmod.load_order(kmod.ModuleTree(modules), ["builtin_y", "why-alias"])
    assert order.modules == []
    assert order.builtin == ["builtin_y", "why-alias"]


@needs_objcopy
def test_missing_module_is_an_error(modules: Path) -> None:
    with pytest.raises(BootkitError, match="nosuch"):
        kmod.load_order(kmod.ModuleTree(modules), ["nosuch"])


@needs_objcopy
def test_missing_hard_dependency_is_an_error(modules: Path) -> None:
    make_module(modules / "kernel/needs.ko", depends="gone")
    with pytest.raises(BootkitError, match="gone"):
        kmod.load_order(kmod.ModuleTree(modules), ["needs"])


@needs_objcopy
def test_missing_soft_dependency_is_recorded_not_fatal(modules: Path) -> None:
    make_module(modules / "kernel/soft.ko", softdep="pre: nothing-provides-this post: lib_c")
    order = kmod.load_order(kmod.ModuleTree(modules), ["soft"])
    assert names(order) == ["soft"]  # post: softdeps are not loaded first
    assert order.missing_softdeps == ["nothing-provides-this (wanted by soft)"]


@needs_objcopy
def test_dependency_cycle_is_an_error(modules: Path) -> None:
    make_module(modules / "kernel/p.ko", depends="q")
    make_module(modules / "kernel/q.ko", depends="p")
    with pytest.raises(BootkitError, match="cycle"):
        kmod.load_order(kmod.ModuleTree(modules), ["p"])


@needs_objcopy
def test_modules_for_another_kernel_are_refused(modules: Path) -> None:
    with pytest.raises(BootkitError, match=r"built for 6\.1\.0-test"):
        kmod.load_order(kmod.ModuleTree(modules), ["lib_c"], "6.2.0-other")


@needs_objcopy
def test_updates_directory_wins(modules: Path) -> None:
    make_module(modules / "updates/lib_c.ko", depends="", description="newer")
    module = kmod.ModuleTree(modules).module("lib_c")
    assert module.relpath.as_posix() == "updates/lib_c.ko"


@needs_objcopy
@pytest.mark.parametrize("suffix", [".ko.xz", ".ko.gz", ".ko.zst"])
def test_compressed_modules(tmp_path: Path, suffix: str) -> None:
    if suffix == ".ko.zst" and shutil.which("zstd") is None:
        pytest.skip("zstd not installed")
    root = tmp_path / KVER
    make_module(root / f"kernel/top{suffix}", depends="dep")
    make_module(root / f"kernel/dep{suffix}", depends="")
    order = kmod.load_order(kmod.ModuleTree(root), ["top"], KVER)
    assert names(order) == ["dep", "top"]
    top = order.modules[1]
    assert top.installed_relpath.as_posix() == "kernel/top.ko"
    assert kmod.read_module(top.path).startswith(b"\x7fELF")


def test_softdep_parsing() -> None:
    assert kmod.softdeps_before(["pre: a b post: c", "post: d pre: e"]) == ["a", "b", "e"]


def test_modules_dir_must_exist(tmp_path: Path) -> None:
    with pytest.raises(BootkitError, match="does not exist"):
        kmod.ModuleTree(tmp_path / "nope")


def test_not_a_module_is_an_error() -> None:
    with pytest.raises(BootkitError, match="not a kernel module"):
        kmod.parse_modinfo(b"not an elf file at all")


# A real kernel: the result must agree with depmod's modules.dep and aliases.

_REAL = ["virtio_pci", "virtio_blk", "virtio_scsi", "ahci", "sd_mod", "nvme", "ext4"]


def kernel_modules_dir(test_kernel: Path) -> Path:
    found = sorted(
        d
        for base in ("lib/modules", "usr/lib/modules")
        if (test_kernel / base).is_dir()
        for d in (test_kernel / base).iterdir()
        if (d / "kernel").is_dir()
    )
    if not found:
        pytest.skip("the test kernel has no modules")
    return found[0]


@pytest.fixture(scope="module")
def depmod_output(test_kernel: Path) -> str:
    depmod = shutil.which("depmod") or "/sbin/depmod"
    if not Path(depmod).exists():
        pytest.skip("depmod (kmod) not installed")
    kver = kernel_modules_dir(test_kernel).name
    proc = subprocess.run(
        [depmod, "-b", str(test_kernel), "-n", kver], capture_output=True, text=True, check=True
    )
    return proc.stdout


def test_real_kernel_order_agrees_with_depmod(test_kernel: Path, depmod_output: str) -> None:
    directory = kernel_modules_dir(test_kernel)
    order = kmod.load_order(kmod.ModuleTree(directory), _REAL, directory.name)
    position = {m.relpath.as_posix(): i for i, m in enumerate(order.modules)}
    deps = {}
    for line in depmod_output.splitlines():
        if line.startswith(("kernel/", "updates/", "extra/")) and ":" in line:
            module, _, rest = line.partition(":")
            deps[module] = rest.split()
    for module, index in position.items():
        for dep in deps[module]:
            assert dep in position, f"{module} needs {dep}"
            assert position[dep] < index, f"{dep} must load before {module}"
    ext4 = position["kernel/fs/ext4/ext4.ko"]
    crc32c = [m for m in order.modules if "crypto-crc32c" in m.aliases]
    assert "crc32c_generic" in [m.name for m in crc32c]
    assert all(position[m.relpath.as_posix()] < ext4 for m in crc32c)


def test_real_kernel_aliases_agree_with_depmod(test_kernel: Path, depmod_output: str) -> None:
    directory = kernel_modules_dir(test_kernel)
    tree = kmod.ModuleTree(directory)
    for alias in ("crypto-crc32c", "crct10dif"):
        expected = set(re.findall(rf"^alias {re.escape(alias)} (\S+)$", depmod_output, re.M))
        assert expected, alias
        assert set(tree.resolve(alias) or ()) == expected
