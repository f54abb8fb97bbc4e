"""The files a deployment boots from: its kernel and initramfs, or one Unified Kernel Image.

The initramfs is the tree's own when it ships one, or one bootkit builds from the
tree's kernel modules. A UKI bundles kernel, initramfs, the tree's os-release and the
command line that names the deployment; it is signed when the sysroot has a key.

Nothing is read from the tree by path: the kernel and the tree's initramfs are taken
out of it (see `bootkit.base.confined`) into the sysroot's tmp directory, and the
initramfs builder is given a mirror of the modules directory there, so no symlink in
the tree leads to a host file. Everything here is gone once the payload is on $BOOT.
"""

from __future__ import annotations

import contextlib
import os
import secrets
from collections.abc import Iterator
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING

from bootkit.base.confined import Tree
from bootkit.base.files import remove_path
from bootkit.boot import payloads
from bootkit.errors import BootkitError
from bootkit.secureboot.signing import Signer
from bootkit.sysroot.kernel import TreeKernel, os_release_data

if TYPE_CHECKING:
    from bootkit.secureboot.pcrpolicy import PcrSigner

# The scratch directory of one call, in the sysroot's tmp directory.
_WORK = "boot-files-"


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
    pcr_signer: PcrSigner | None = None,
) -> Iterator[dict[str, Path]]:
    """The payload's files by name on $BOOT: `linux` and `initrd`, or with a command
    line, one UKI (`uki.efi`) whose .osrel section is the tree's os-release, with a
    signed PCR 11 policy when there is a PCR signer.

    Called under the sysroot's lock: what an earlier, interrupted call left in `tmp`
    (links that keep stored objects alive among it) is removed first.
    """
    for leftover in tmp.glob(f"{_WORK}*"):
        remove_path(leftover)
    confined = Tree(tree)
    work = tmp / f"{_WORK}{os.getpid()}-{secrets.token_hex(4)}"
    os.mkdir(work, 0o700)
    try:
        linux = work / "vmlinuz"
        confined.copy_out(kernel.linux.relative_to(tree), linux)
        initrd = _initramfs(work, confined, kernel, mode)
        if uki_cmdline is None:
            yield {"linux": linux, "initrd": initrd}
            return
        # pefile and the signer are loaded only when UKIs are made.
        from bootkit.secureboot.uki import build_uki

        image = work / payloads.UKI_FILE
        build_uki(image, linux, [initrd], uki_cmdline, os_release_data(tree) or b"",
                  pcr_signer=pcr_signer)
        if signer is not None:
            signer.sign(image)
        yield {payloads.UKI_FILE: image}
    finally:
        remove_path(work)


def _initramfs(work: Path, tree: Tree, kernel: TreeKernel, mode: InitramfsMode) -> Path:
    """The initramfs, in `work`: the tree's own, or one built from its modules."""
    initrd = work / "initrd.img"
    if mode != InitramfsMode.BUILD and kernel.initramfs is not None:
        tree.copy_out(kernel.initramfs.relative_to(tree.root), initrd)
        return initrd
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

    # The builder reads what it is given by path: a mirror, holding only the tree's own files.
    modules = work / "modules"
    os.mkdir(modules, 0o700)
    tree.mirror(kernel.modules_dir.relative_to(tree.root), modules / kernel.version)
    build_initramfs(initrd, kernel.version, modules)
    return initrd
