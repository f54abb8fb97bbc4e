"""Build bootkit's busybox initramfs for one kernel release."""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path, PurePosixPath

from bootkit.base.files import atomic_write
from bootkit.errors import BootkitError
from bootkit.initramfs import compression, cpio
from bootkit.initramfs.elfdeps import LibraryResolver
from bootkit.initramfs.image import ImageTree
from bootkit.initramfs.kmod import LoadOrder, ModuleTree, load_order, read_module

# Enough to find an ext4 root on virtio (QEMU), SATA/AHCI and NVMe disks; ext4's
# soft dependency brings crc32c, without which mounting fails.
DEFAULT_MODULES = ("virtio_pci", "virtio_blk", "virtio_scsi", "ahci", "sd_mod", "nvme", "ext4")
DEFAULT_BUSYBOX = Path("/bin/busybox")

INIT = "init"
BUSYBOX = "bin/busybox"
HOOK = "usr/lib/bootkit/bootkit-prepare-root"
MODULE_LIST = "etc/bootkit/modules"
KERNEL_RELEASE = "etc/bootkit/kernel-release"
# Made at build time so they exist before /init can create anything: the
# kernel opens /dev/console for /init's output before devtmpfs is mounted.
_DIRECTORIES = ("bin", "sbin", "usr/bin", "usr/sbin", "dev", "proc", "sys", "run", "tmp", "sysroot")


@dataclass(frozen=True)
class BuildResult:
    """What went into an image, for the CLI's report and for callers that log it."""

    output: Path
    kernel_release: str
    compression: str
    modules: tuple[str, ...]
    builtin: tuple[str, ...]
    missing_softdeps: tuple[str, ...]
    files: tuple[str, ...]
    uncompressed_size: int
    size: int


def data_file(*parts: str) -> bytes:
    """A file shipped in bootkit/data (the init script, the dracut module)."""
    return resources.files("bootkit").joinpath("data", *parts).read_bytes()


def hook_script() -> bytes:
    return data_file("dracut", "90bootkit", "bootkit-prepare-root.sh")


def find_modules_dir(modules_dir: Path, kernel_release: str) -> Path:
    """Accept `lib/modules/<kver>` itself, `lib/modules`, or a root tree holding either."""
    for candidate in (
        modules_dir / kernel_release,
        modules_dir / "lib" / "modules" / kernel_release,
        modules_dir / "usr" / "lib" / "modules" / kernel_release,
    ):
        if candidate.is_dir():
            return candidate
    if modules_dir.is_dir():
        return modules_dir
    raise BootkitError(
        f"kernel modules directory {modules_dir} does not exist",
        hint="pass the lib/modules/<kver> directory of the kernel the image is for",
    )


def assemble(
    kernel_release: str,
    modules_dir: Path,
    modules: Sequence[str] = DEFAULT_MODULES,
    binaries: Sequence[Path] = (),
    busybox: Path | None = None,
) -> tuple[ImageTree, LoadOrder]:
    """The image's file tree: /init, busybox, the hook, the modules and `binaries`."""
    if not kernel_release or "/" in kernel_release:
        raise BootkitError(f"invalid kernel release {kernel_release!r}")
    busybox = busybox or DEFAULT_BUSYBOX
    if not busybox.is_file():
        raise BootkitError(
            f"busybox not found at {busybox}",
            hint="install busybox-static (Debian: apt-get install busybox-static) or pass busybox=",
        )
    tree = ImageTree()
    for directory in _DIRECTORIES:
        tree.mkdir(directory)
    tree.add_char_device("dev/console", 5, 1, 0o600)
    tree.add_char_device("dev/null", 1, 3, 0o666)
    tree.add_file(INIT, data_file("init"), 0o755)
    tree.add_file(HOOK, hook_script(), 0o755)

    resolver = LibraryResolver()
    # busybox goes to /bin/busybox wherever the host keeps it; /init calls it there.
    tree.add_host_file(busybox, BUSYBOX)
    for needed in resolver.closure([busybox])[1:]:
        tree.add_host_file(needed)
    for path in resolver.closure([Path(b).absolute() for b in binaries]):
        tree.add_host_file(path)

    order = load_order(
        ModuleTree(find_modules_dir(modules_dir, kernel_release)), modules, kernel_release
    )
    base = PurePosixPath("lib/modules") / kernel_release
    lines = []
    for module in order.modules:
        target = base / module.installed_relpath
        tree.add_file(target, read_module(module.path))
        optional = " optional" if module.name in order.optional else ""
        lines.append(f"{module.name} /{target}{optional}\n")
    tree.add_file(MODULE_LIST, "".join(lines).encode())
    tree.add_file(KERNEL_RELEASE, f"{kernel_release}\n".encode())
    return tree, order


def build_initramfs(
    output: Path,
    kver: str,
    modules_dir: Path,
    modules: Sequence[str] = DEFAULT_MODULES,
    binaries: Sequence[Path] = (),
    compress: str = "gzip",
    busybox: Path | None = None,
) -> BuildResult:
    """Write bootkit's busybox initramfs for kernel `kver` to `output`, atomically."""
    method = compress
    if method not in compression.COMPRESSORS:
        raise BootkitError(
            f"unknown compression {method!r}",
            hint=f"use one of {', '.join(compression.COMPRESSORS)}",
        )
    if not output.parent.is_dir():
        raise BootkitError(f"directory {output.parent} does not exist")
    tree, order = assemble(kver, modules_dir, modules, binaries, busybox)
    buffer = io.BytesIO()
    cpio.write_archive(tree.members(), buffer)
    image = compression.compress(buffer.getvalue(), method)
    atomic_write(output, image)
    return BuildResult(
        output=output,
        kernel_release=kver,
        compression=method,
        modules=tuple(m.name for m in order.modules),
        builtin=tuple(order.builtin),
        missing_softdeps=tuple(order.missing_softdeps),
        files=tuple(m.name for m in tree.members()),
        uncompressed_size=tree.uncompressed_size(),
        size=len(image),
    )
