"""Commands that build and read initramfs images, and install the dracut module."""

from __future__ import annotations

import stat
from pathlib import Path

import click

from bootkit.cli.common import print_json, warn
from bootkit.initramfs import DEFAULT_MODULES, build_initramfs, read_image
from bootkit.initramfs.compression import COMPRESSORS
from bootkit.initramfs.cpio import Member
from bootkit.initramfs.dracut import DRACUT_MODULE_DIR, install_dracut_module


@click.group()
def initramfs() -> None:
    """Build bootkit's busybox initramfs, or list what an initramfs holds."""


@initramfs.command()
@click.option("--kver", required=True, help="Kernel release the image is for, e.g. 6.1.0-56-amd64.")
@click.option(
    "--modules-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("/lib/modules"),
    show_default=True,
    help="lib/modules/<kver>, lib/modules, or a root tree holding them. modules.dep is "
    "not needed: dependencies are read from each module.",
)
@click.option(
    "--module",
    "modules",
    multiple=True,
    metavar="NAME",
    help="Kernel module (or alias) to add, with its dependencies; repeat for more. "
    f"Added to the defaults: {', '.join(DEFAULT_MODULES)}.",
)
@click.option(
    "--no-default-modules", is_flag=True, help="Start from no modules instead of the defaults."
)
@click.option(
    "--binary",
    "binaries",
    multiple=True,
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Program to copy in at the same path, with its shared libraries and ELF "
    "interpreter; repeat for more.",
)
@click.option(
    "--busybox",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    default=None,
    help="The busybox to use (default /bin/busybox; a static one needs no libraries).",
)
@click.option(
    "-o",
    "--output",
    required=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="Image to write (replaced atomically).",
)
@click.option(
    "--compress",
    type=click.Choice(COMPRESSORS),
    default="gzip",
    show_default=True,
    help="Compression; the kernel must support it (Debian's does all of these).",
)
@click.option("--json", "as_json", is_flag=True, help="Print what went into the image as JSON.")
def build(
    kver: str,
    modules_dir: Path,
    modules: tuple[str, ...],
    no_default_modules: bool,
    binaries: tuple[Path, ...],
    busybox: Path | None,
    output: Path,
    compress: str,
    as_json: bool,
) -> None:
    """Build an initramfs that mounts root= and boots the bootkit= deployment.

    It holds busybox, /init, the bootkit-prepare-root hook and the kernel
    modules to reach the root disk (virtio, AHCI, NVMe, ext4 by default).
    The kernel command line it understands is described in
    `pydoc bootkit.initramfs`.
    """
    wanted = list(dict.fromkeys((() if no_default_modules else DEFAULT_MODULES) + modules))
    result = build_initramfs(
        output, kver, modules_dir, wanted, binaries, compress=compress, busybox=busybox
    )
    for softdep in result.missing_softdeps:
        warn(f"soft dependency {softdep} is not available; left out")
    if as_json:
        print_json(
            {
                "output": str(result.output),
                "kernel_release": result.kernel_release,
                "compression": result.compression,
                "size": result.size,
                "uncompressed_size": result.uncompressed_size,
                "modules": list(result.modules),
                "builtin": list(result.builtin),
                "missing_softdeps": list(result.missing_softdeps),
                "files": list(result.files),
            }
        )
        return
    click.echo(
        f"Wrote {output}: {_size(result.size)} ({result.compression}, "
        f"{_size(result.uncompressed_size)} unpacked), {len(result.files)} files, "
        f"{len(result.modules)} kernel modules for {kver}"
    )


@initramfs.command()
@click.argument("image", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print segments and members as JSON.")
def inspect(image: Path, as_json: bool) -> None:
    """List what an initramfs holds, segment by segment, as the kernel unpacks it.

    Reads plain cpio archives and gzip, zstd, xz, lzma, bzip2 and lz4
    streams, in any sequence (e.g. an uncompressed early microcode archive
    followed by the compressed main one).
    """
    segments = read_image(image)
    if as_json:
        print_json(
            {
                "image": str(image),
                "segments": [
                    {
                        "offset": s.offset,
                        "length": s.length,
                        "compression": s.compression,
                        "members": [_member_json(m) for m in s.members],
                    }
                    for s in segments
                ],
            }
        )
        return
    for number, segment in enumerate(segments, 1):
        kind = "cpio" if segment.compression == "none" else f"{segment.compression}-compressed cpio"
        click.echo(
            f"segment {number}: {kind} at offset {segment.offset}, {segment.length} bytes, "
            f"{len(segment.members)} members"
        )
        for member in segment.members:
            target = f" -> {member.link_target}" if member.kind == "symlink" else ""
            click.echo(f"  {stat.filemode(member.mode)} {member.size:>10} {member.name}{target}")


def _member_json(member: Member) -> dict[str, object]:
    data: dict[str, object] = {
        "name": member.name,
        "type": member.kind,
        "mode": f"{stat.S_IMODE(member.mode):04o}",
        "size": member.size,
    }
    if member.kind == "symlink":
        data["target"] = member.link_target
    if member.kind in ("char", "block"):
        data["rdev"] = list(member.rdev)
    return data


def _size(n: int) -> str:
    return f"{n / 1e6:.1f} MB" if n >= 100_000 else f"{n / 1e3:.1f} kB"


@click.group()
def dracut() -> None:
    """The dracut module that runs bootkit-prepare-root in a systemd initramfs."""


@dracut.command("install")
@click.option(
    "--dest",
    type=click.Path(file_okay=False, path_type=Path),
    default=DRACUT_MODULE_DIR,
    show_default=True,
    help="Directory to install the module into.",
)
def dracut_install(dest: Path) -> None:
    """Install the 90bootkit dracut module so `dracut --add bootkit` includes the hook.

    The hook runs after the physical root is mounted at /sysroot and leaves the
    bootkit= deployment there, before systemd switches root.
    """
    install_dracut_module(dest)
    click.echo(f"Installed the bootkit dracut module in {dest}; build with: dracut --add bootkit")


COMMANDS = [initramfs, dracut]
