"""`bootkit deploy`: import a tree, prepare its /etc, /var and boot payload, then switch."""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from bootkit.base.files import fsync_dir, remove_path, remove_tree, syncfs
from bootkit.boot import payloads
from bootkit.boot.entries import options_for
from bootkit.boot.payloads import Payload
from bootkit.contract import check_name
from bootkit.errors import BootkitError
from bootkit.records.deployment import Deployment
from bootkit.secureboot import signing
from bootkit.sysroot import etcmerge
from bootkit.sysroot.importers import open_source
from bootkit.sysroot.kernel import TreeKernel, find_kernel, os_release_path, read_os_release

INITRAMFS_MODES = ("auto", "tree", "build")
HASH_CACHE = "import-cache.json"


def deploy(
    sysroot,  # type: ignore[no-untyped-def]  # bootkit.sysroot.transaction.Sysroot (import cycle)
    source: Path,
    os_name: str | None,
    version: str | None,
    kargs: tuple[str, ...],
    make_default: bool,
    initramfs: str,
    progress: Callable[[int], None] | None,
    warn: Callable[[str], None] | None,
    tries: int | None = None,
) -> Deployment:
    if initramfs not in INITRAMFS_MODES:
        raise BootkitError(
            f"unknown initramfs mode {initramfs!r}", hint=f"use one of {', '.join(INITRAMFS_MODES)}"
        )
    src = open_source(source, sysroot.meta / HASH_CACHE)
    for karg in kargs:
        if not karg or any(c.isspace() for c in karg) or karg.startswith(("bootkit=", "root=")):
            raise BootkitError(
                f"invalid kernel argument {karg!r}",
                hint="one argument per --karg, no spaces; bootkit= and root= are set by bootkit",
            )
    with sysroot.locked():
        sysroot.repair()
        cfg = sysroot.config
        os_name = check_name(os_name or cfg.os, "os")
        # Before anything is written: a key that does not load fails the deploy at once.
        signer = signing.configured_signer(cfg) if cfg.uki else None
        state = sysroot.state()
        stateroot = sysroot.stateroot(os_name)
        (stateroot / "deploy").mkdir(parents=True, exist_ok=True)
        (stateroot / "var").mkdir(exist_ok=True)
        staging = stateroot / "deploy" / f".staging-{os.getpid()}-{secrets.token_hex(4)}"
        boot = sysroot.boot_path
        new_payload: Payload | None = None
        # A /var that is no longer empty is never refilled, so later trees' /var is not read.
        dropped = frozenset({"var"}) if any((stateroot / "var").iterdir()) else frozenset()
        try:
            report = src.import_into(staging, sysroot.objects, progress or _unseen, dropped)
            if report.skipped and warn:
                warn(
                    f"skipped {len(report.skipped)} special file(s): {', '.join(report.skipped[:10])}"
                    + (" ..." if len(report.skipped) > 10 else "")
                )
            previous = next((d for d in sysroot.ordered(state) if d.os == os_name), None)
            _prepare_etc(
                staging, sysroot.deployment_dir(os_name, previous.id) if previous else None
            )
            _prepare_var(staging, stateroot / "var")
            kernel = find_kernel(staging)
            osrel = read_os_release(staging)
            serial = state.serial + 1
            dep = Deployment(
                os=os_name,
                id=f"{serial}-{report.digest[:8]}",
                version=version
                or osrel.get("VERSION_ID")
                or osrel.get("VERSION")
                or kernel.version,
                source=src.origin,
                kernel_version=kernel.version,
                payload="",  # named by its content, known once it is built
                title=osrel.get("PRETTY_NAME") or osrel.get("NAME") or os_name,
                created=time.time(),
                serial=serial,
                # Like ostree: arguments the admin set stay when the OS is updated.
                kargs=kargs or (previous.kargs if previous else ()),
                uki=cfg.uki,
            )
            # A UKI carries the command line that names this deployment.
            cmdline = options_for(cfg, dep) if dep.uki else None
            with _boot_files(sysroot, staging, kernel, initramfs, cmdline, signer) as files:
                payload = Payload(
                    os_name, payloads.payload_name(kernel.version, list(files.values()))
                )
                if payloads.install(
                    boot, payload, files, reclaimable=sysroot.reclaimable_bytes(state)
                ):
                    new_payload = payload
            dep = dep.with_changes(payload=payload.name)
            syncfs(staging)
            final = sysroot.deployment_dir(os_name, dep.id)
            os.rename(staging, final)
            fsync_dir(final.parent)
        except BaseException:
            # Files stored for the discarded tree are linked from nowhere once it is gone.
            with contextlib.suppress(OSError):
                sysroot.objects.mark_prune_pending()
            with contextlib.suppress(OSError):
                remove_tree(staging)
            if new_payload is not None:
                shutil.rmtree(new_payload.dir(boot), ignore_errors=True)
            with contextlib.suppress(OSError):
                sysroot.objects.prune()
            raise
        dep.save(sysroot.metadata_path(os_name, dep.id))
        new_state = state.with_changes(
            serial=serial,
            deployments=(*state.deployments, dep.ref),
            default=dep.ref if make_default or state.default is None else state.default,
        )
        # The new entry is counted with `tries` (default: the sysroot's setting).
        sysroot.commit(new_state, {dep.ref: tries} if tries is not None else None)
        src.imported()
        return dep


def _unseen(done: int) -> None:
    """Progress nobody watches."""


def _prepare_etc(tree: Path, previous: Path | None) -> None:
    """usr/etc holds the defaults; etc becomes the merge of the admin's changes onto them."""
    if (tree / "usr/etc").is_dir():
        if (tree / "etc").is_symlink() or (tree / "etc").exists():
            remove_path(tree / "etc")
    else:
        etcmerge.etc_from_tree(tree)
    if previous is not None and (previous / "etc").is_dir():
        etcmerge.merge_etc(previous / "usr/etc", previous / "etc", tree / "usr/etc", tree / "etc")
    else:
        etcmerge.copy_etc(tree / "usr/etc", tree / "etc")


def _prepare_var(tree: Path, shared: Path) -> None:
    """The OS's /var seeds the shared /var once, while it is empty; later trees' /var is dropped."""
    var = tree / "var"
    if var.is_dir() and not var.is_symlink():
        if not any(shared.iterdir()):
            for child in var.iterdir():
                os.rename(child, shared / child.name)
            st = var.stat()
            os.chmod(shared, st.st_mode & 0o7777)
        remove_tree(var)
    elif var.is_symlink() or var.exists():
        remove_path(var)
    var.mkdir(mode=0o755)


@contextlib.contextmanager
def _boot_files(
    sysroot,  # type: ignore[no-untyped-def]
    tree: Path,
    kernel: TreeKernel,
    initramfs: str,
    uki_cmdline: str | None,
    signer: signing.Signer | None,
) -> Iterator[dict[str, Path]]:
    """The payload's files: kernel and initramfs, or, with a command line, one UKI of them.

    The UKI is signed when the sysroot has a key; its .osrel section is the tree's
    os-release, so whoever inspects the UKI sees which OS it starts.
    """
    with _initrd_for(sysroot, tree, kernel, initramfs) as initrd:
        if uki_cmdline is None:
            yield {"linux": kernel.linux, "initrd": initrd}
            return
        from bootkit.secureboot.uki import (
            build_uki,  # pefile and the signer only when UKIs are made
        )

        image = sysroot.meta / "tmp" / f"uki-{os.getpid()}.efi"
        image.parent.mkdir(exist_ok=True)
        try:
            osrel = os_release_path(tree)
            build_uki(
                image, kernel.linux, [initrd], uki_cmdline, osrel.read_bytes() if osrel else b""
            )
            if signer is not None:
                signer.sign(image)
            yield {payloads.UKI_FILE: image}
        finally:
            image.unlink(missing_ok=True)


class _initrd_for:
    """The initramfs to boot `kernel` with: the tree's own, or one bootkit builds."""

    def __init__(self, sysroot, tree: Path, kernel: TreeKernel, mode: str) -> None:  # type: ignore[no-untyped-def]
        self.sysroot, self.tree, self.kernel, self.mode = sysroot, tree, kernel, mode
        self.built: Path | None = None

    def __enter__(self) -> Path:
        if self.mode in ("auto", "tree") and self.kernel.initramfs is not None:
            return self.kernel.initramfs
        if self.mode == "tree":
            raise BootkitError(
                f"the tree has no initramfs for kernel {self.kernel.version}",
                hint="ship usr/lib/modules/<kver>/initramfs.img, or use --initramfs build",
            )
        if self.kernel.modules_dir is None:
            raise BootkitError(
                f"cannot build an initramfs: the tree has no modules for kernel {self.kernel.version}",
                hint=f"ship usr/lib/modules/{self.kernel.version}/, or an initramfs.img beside the kernel",
            )
        from bootkit.initramfs import build_initramfs

        tmp = self.sysroot.meta / "tmp"
        tmp.mkdir(exist_ok=True)
        self.built = tmp / f"initrd-{os.getpid()}"
        build_initramfs(self.built, self.kernel.version, self.kernel.modules_dir)
        return self.built

    def __exit__(self, *exc: object) -> None:
        if self.built is not None:
            self.built.unlink(missing_ok=True)
