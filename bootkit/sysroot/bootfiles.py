"""The files a deployment boots from: its kernel and initramfs, or one Unified Kernel Image.

The initramfs is the tree's own when it ships one, or one bootkit builds from the
tree's kernel modules. A UKI bundles kernel, initramfs, the tree's os-release and the
command line that names the deployment; it is signed when the sysroot has a key.
Everything built here lives in the sysroot's tmp directory and is gone once the
payload has been copied to $BOOT.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from enum import StrEnum
from pathlib import Path

from bootkit.boot import payloads
from bootkit.errors import BootkitError
from bootkit.secureboot.signing import Signer
from bootkit.sysroot.kernel import TreeKernel, os_release_path


class InitramfsMode(StrEnum):
    """Where a deployment's initramfs comes from."""

    AUTO = "auto"  # the tree's own when it ships one, else built by bootkit
    TREE = "tree"  # the tree's own, or the deploy fails
    BUILD = "build"  # always built by bootkit from the tree's modules


@contextlib.contextmanager
def boot_files(
    tmp: Path,
    tree: Path,
    kernel: TreeKernel,
    mode: InitramfsMode,
    uki_cmdline: str | None,
    signer: Signer | None,
) -> Iterator[dict[str, Path]]:
    """The payload's files by name on $BOOT: `linux` and `initrd`, or with a command
    line, one UKI (`uki.efi`) whose .osrel section is the tree's os-release."""
    with _initramfs(tmp, kernel, mode) as initrd:
        if uki_cmdline is None:
            yield {"linux": kernel.linux, "initrd": initrd}
            return
        # pefile and the signer are loaded only when UKIs are made.
        from bootkit.secureboot.uki import build_uki

        image = tmp / f"uki-{os.getpid()}.efi"
        try:
            osrel = os_release_path(tree)
            build_uki(image, kernel.linux, [initrd], uki_cmdline,
                      osrel.read_bytes() if osrel else b"")
            if signer is not None:
                signer.sign(image)
            yield {payloads.UKI_FILE: image}
        finally:
            image.unlink(missing_ok=True)


@contextlib.contextmanager
def _initramfs(tmp: Path, kernel: TreeKernel, mode: InitramfsMode) -> Iterator[Path]:
    if mode != InitramfsMode.BUILD and kernel.initramfs is not None:
        yield kernel.initramfs
        return
    if mode == InitramfsMode.TREE:
        raise BootkitError(
            f"the tree has no initramfs for kernel {kernel.version}",
            hint="ship usr/lib/modules/<kver>/initramfs.img, or let bootkit build one",
        )
    if kernel.modules_dir is None:
        raise BootkitError(
            f"cannot build an initramfs: the tree has no modules for kernel {kernel.version}",
            hint=f"ship usr/lib/modules/{kernel.version}/, or an initramfs.img beside the kernel",
        )
    from bootkit.initramfs import build_initramfs

    built = tmp / f"initrd-{os.getpid()}"
    try:
        build_initramfs(built, kernel.version, kernel.modules_dir)
        yield built
    finally:
        built.unlink(missing_ok=True)
