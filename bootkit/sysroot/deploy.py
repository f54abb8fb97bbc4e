"""`bootkit deploy`: a source tree becomes a deployment, in named steps.

    import -> lay out /etc -> merge /etc -> hand /var over -> lay out the desktop
    -> describe -> image kernel arguments -> install the payload -> settle
    -> commit (or, staged, record it for finalizing)

A staged deploy (see `bootkit.sysroot.staged`) stops after `settle` and records
itself instead of committing; /etc is merged when it is finalized, at shutdown.

Every step works on one `Job`: the request, the staging directory the tree is built
in, and what earlier steps found. Until `settle`, nothing is written outside the
staging directory and the new payload directory on $BOOT, except on the first
deploy of an OS, which fills the shared /var (from the tree's /var and the desktop
layout's directories) and keeps it filled even if the deploy fails later. `settle`
records the deployment as in flight, writes its metadata and gives the tree its
final name; `commit` lists it in the state and switches the boot configuration in
one transaction (see `bootkit.sysroot.transaction`). A failure before the state
lists it removes the rest; a crash leaves what the next command removes (see
`bootkit.sysroot.leftovers`).
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from bootkit.base.confined import Tree
from bootkit.base.files import fsync_dir, remove_path, syncfs
from bootkit.boot import payloads
from bootkit.boot.entries import options_for
from bootkit.boot.payloads import Payload
from bootkit.contract import check_name
from bootkit.errors import BootkitError
from bootkit.formats import bootvalues
from bootkit.records.config import SysrootConfig
from bootkit.records.deployment import Deployment, PayloadFile
from bootkit.records.state import State
from bootkit.secureboot import signing
from bootkit.sysroot import desktoplayout, etcmerge, imageargs, mergesource, staged, transaction
from bootkit.sysroot.bootfiles import InitramfsMode, boot_files
from bootkit.sysroot.cleanup import reclaimable_bytes
from bootkit.sysroot.importers import ImportReport, Source, check_outside, open_source
from bootkit.sysroot.kernel import TreeKernel, find_kernel, read_os_release
from bootkit.sysroot.layout import Sysroot
from bootkit.sysroot.releasenames import release_names
from bootkit.sysroot.store import share_tree

# The image modules are loaded only to deploy an image: a tree's deploy does without.
if TYPE_CHECKING:
    from bootkit.secureboot.pcrpolicy import PcrSigner
    from bootkit.sysroot.images.pull import ResolvedImage

log = logging.getLogger("bootkit")

Progress = Callable[[int], None]
HASH_CACHE = "import-cache.json"


@dataclass(frozen=True)
class DeployRequest:
    """What to deploy, and how; validated when made."""

    source: Path | ResolvedImage  # a tree (directory or tar archive), or an OS image
    os_name: str | None = None  # default: the sysroot's OS
    version: str | None = None  # default: from the tree's os-release
    kargs: tuple[str, ...] | None = None  # None: see `kernel_arguments`
    make_default: bool = True
    initramfs: InitramfsMode = InitramfsMode.AUTO
    tries: int | None = None  # boot tries of its entry; None: the sysroot's setting
    # Switch at shutdown instead of now; None: when run inside a booted deployment.
    stage: bool | None = None
    lock: bool = False  # a staged deployment that finalizing leaves alone until unlocked

    def __post_init__(self) -> None:
        if self.lock and self.stage is False:
            raise BootkitError(
                "only a staged deployment can be locked",
                hint="drop --lock, or stage the deployment with --stage",
            )
        if self.os_name is not None:
            check_name(self.os_name, "os")
        if self.version is not None:
            bootvalues.check_version(self.version)
        for karg in self.kargs or ():
            imageargs.check_settable(karg)
        if self.tries is not None:
            bootvalues.check_tries(self.tries)

    @property
    def image(self) -> ResolvedImage | None:
        return None if isinstance(self.source, Path) else self.source


def kernel_arguments(requested: tuple[str, ...] | None, previous: Deployment | None) -> tuple[str, ...]:
    """A new deployment's kernel arguments: those requested, else those of the
    deployment it replaces, so arguments the admin set survive an OS update."""
    if requested is not None:
        return requested
    return previous.kargs if previous is not None else ()


@dataclass
class Job:
    """One deploy in progress: the request and what the steps have made of it."""

    sysroot: Sysroot
    request: DeployRequest
    config: SysrootConfig
    state: State
    os_name: str
    source: Source
    staging: Path
    signer: signing.Signer | None
    pcr_signer: PcrSigner | None
    previous: Deployment | None = None  # the deployment of this OS it follows
    stage: bool = False  # switched at shutdown, by `bootkit finalize-staged`
    report: ImportReport | None = None
    kernel: TreeKernel | None = None
    deployment: Deployment | None = None
    new_payload: Payload | None = None  # copied to $BOOT by this job
    recorded: bool = False  # recorded as in flight, with its metadata written
    settled: bool = False  # the tree has its final name
    first_of_os: bool = False  # the shared /var was empty before this deploy
    serial: int = field(init=False)

    def __post_init__(self) -> None:
        self.serial = self.sysroot.next_serial(self.state)

    @property
    def stateroot(self) -> Path:
        return self.sysroot.stateroot(self.os_name)


def deploy(sysroot: Sysroot, request: DeployRequest, progress: Progress | None = None) -> Deployment:
    """Deploy `request.source` into `sysroot` and switch the boot configuration to it, or,
    staged, leave the switch to `bootkit.sysroot.finalize`. Replaces a staged deployment."""
    with sysroot.locked():
        transaction.repair(sysroot)
        job = _start(sysroot, request)
        with _discarded_on_failure(job):
            _import(job, progress or (lambda n: None))
            _lay_out_etc(job)
            _merge_etc(job)
            _hand_over_var(job)
            _lay_out_desktop(job)
            _describe(job)
            _add_image_kargs(job)
            _install_payload(job)
            _settle(job)
            dep = _record_staged(job) if job.stage else _commit(job)
        with contextlib.suppress(OSError):  # what the source keeps for next time is only a speed-up
            job.source.imported()
        return dep


def _start(sysroot: Sysroot, request: DeployRequest) -> Job:
    config = sysroot.config
    os_name = request.os_name or config.os
    # Before anything is written: a key that does not load fails the deploy at once.
    signer = signing.configured_signer(config) if config.uki else None
    pcr_signer = None
    if config.uki and config.pcr_key:
        # Loaded only for a sysroot with a PCR key: it brings construct into start-up.
        from bootkit.secureboot import pcrpolicy

        pcr_signer = pcrpolicy.configured_pcr_signer(config)
    stateroot = sysroot.stateroot(os_name)
    if isinstance(request.source, Path):
        source: Source = open_source(request.source, sysroot.meta / HASH_CACHE)
        check_outside(request.source, stateroot / "deploy")
    else:
        from bootkit.sysroot.images.pull import image_source

        source = image_source(sysroot.images, request.source)
    (stateroot / "deploy").mkdir(parents=True, exist_ok=True)
    (stateroot / "var").mkdir(exist_ok=True)
    staging = stateroot / "deploy" / f".staging-{os.getpid()}-{secrets.token_hex(4)}"
    stage = staged.should_stage(sysroot, sysroot.state(), request.stage, request.lock)
    staged.discard(sysroot, "a new deploy replaces it")
    state = sysroot.state()
    previous = mergesource.merge_source(sysroot, state, os_name)
    return Job(sysroot, request, config, state, os_name, source, staging, signer, pcr_signer,
               previous, stage)


@contextlib.contextmanager
def _discarded_on_failure(job: Job) -> Iterator[None]:
    """On failure, remove what the job made, unless the state lists it already (then the
    switch was under way, and the next command finishes it)."""
    try:
        yield
    except BaseException:
        if _listed(job):
            raise
        store = job.sysroot.objects
        # Files stored for the discarded tree are linked from nowhere once it is gone.
        with contextlib.suppress(OSError):
            store.mark_prune_pending()
        doomed = [job.staging]
        if job.deployment is not None:
            dep = job.deployment
            doomed += [job.sysroot.metadata_path(dep.os, dep.id)] if job.recorded else []
            doomed += [job.sysroot.deployment_dir(dep.os, dep.id)] if job.settled else []
        if job.new_payload is not None:
            doomed.append(job.new_payload.dir(job.sysroot.boot_path))
        for path in doomed:
            with contextlib.suppress(OSError):
                remove_path(path)
        with contextlib.suppress(OSError):
            store.prune()
        raise


def _listed(job: Job) -> bool:
    if job.deployment is None or not job.recorded:
        return False
    try:
        recorded = State.load(job.sysroot.state_path)
    except BootkitError:
        return True  # cannot tell: keep it, the in-flight record says what to do
    return recorded is not None and job.deployment.ref in recorded.deployments


def _import(job: Job, progress: Progress) -> None:
    # A /var that is no longer empty is never refilled, so later trees' /var is not read.
    job.first_of_os = not any((job.stateroot / "var").iterdir())
    dropped = frozenset() if job.first_of_os else frozenset({"var"})
    job.report = job.source.import_into(job.staging, job.sysroot.objects, progress, dropped)
    skipped = job.report.skipped
    if skipped:
        more = " ..." if len(skipped) > 10 else ""
        log.warning("skipped %d special file(s): %s%s", len(skipped), ", ".join(skipped[:10]), more)


def _lay_out_etc(job: Job) -> None:
    """usr/etc holds the OS's /etc defaults, stored once like the rest of usr/ (read-only
    at run time); the live etc is made by the merge, as copies."""
    etcmerge.etc_from_tree(job.staging)
    share_tree(job.sysroot.objects, job.staging / "usr" / "etc")


def _merge_etc(job: Job) -> None:
    """The live /etc: the new defaults plus the admin's changes in the deployment it
    follows. A staged deployment's is made when it is finalized, from the /etc of then."""
    if not job.stage:
        mergesource.build_etc(job.sysroot, job.previous, job.staging, job.staging / "etc")


def _hand_over_var(job: Job) -> None:
    """The tree's /var seeds the shared /var once, while it is empty; later trees' is dropped.

    Its entries are moved, never followed: a symlink among them stays a symlink.
    """
    var = job.staging / "var"
    shared = job.stateroot / "var"
    hint = "ship /var as a directory, or not at all: it seeds the /var all deployments share"
    if Tree(job.staging).real_dir("var", hint):
        if not any(shared.iterdir()):
            for child in var.iterdir():
                os.rename(child, shared / child.name)
            os.chmod(shared, var.stat().st_mode & 0o7777)
        remove_path(var)
    var.mkdir(mode=0o755)


def _lay_out_desktop(job: Job) -> None:
    """home, root, opt, srv, mnt, media and usr/local become symlinks into /var, their
    content moved there on the OS's first deploy (see `desktoplayout`)."""
    assert job.report is not None
    desktoplayout.lay_out(job.staging, job.stateroot / "var", job.sysroot.objects, job.report,
                          first=job.first_of_os)


def _describe(job: Job) -> None:
    """The deployment's record: its kernel, names from os-release, kernel arguments.

    Each value that reaches a boot entry is checked here, naming where it came from.
    """
    assert job.report is not None
    kernel = find_kernel(job.staging)
    linux = kernel.linux
    where = linux.relative_to(job.staging) if linux.is_relative_to(job.staging) else linux
    kver = bootvalues.check_kernel_version(
        kernel.version, "kernel version",
        hint=f"name the tree's kernel ({str(where)!r}) like a release, e.g. 6.1.0-18-amd64",
    )
    image = job.request.image
    version, title = release_names(
        read_os_release(job.staging), kver, job.os_name, job.request.version,
        image.config.version if image else None,
    )
    job.kernel = kernel
    job.deployment = Deployment(
        os=job.os_name,
        id=f"{job.serial}-{job.report.digest[:8]}",
        version=version,
        source=job.source.origin,
        kernel_version=kver,
        payload="",  # named by its content, known once it is built
        title=title,
        created=time.time(),
        serial=job.serial,
        kargs=kernel_arguments(job.request.kargs, job.previous),
        uki=job.config.uki,
        image=image.origin() if image else None,
    )
    options_for(job.config, job.deployment)  # the whole command line, checked before any copy


def _add_image_kargs(job: Job) -> None:
    """The kernel arguments the new tree ships; those of the deployment it follows are
    its image's, so they are not carried over (the admin's are, see `kernel_arguments`)."""
    assert job.deployment is not None
    job.deployment = job.deployment.with_changes(
        image_kargs=imageargs.read_image_kargs(job.staging)
    )
    options_for(job.config, job.deployment)  # all of them together, checked before any copy


def _install_payload(job: Job) -> None:
    """Kernel and initramfs (or the UKI) to $BOOT, after checking that they fit; the
    deployment records each file's digest and where in the tree it came from."""
    assert job.kernel is not None and job.deployment is not None
    sysroot, dep = job.sysroot, job.deployment
    # A UKI carries the command line that names this deployment.
    cmdline = options_for(job.config, dep) if dep.uki else None
    sysroot.tmp.mkdir(exist_ok=True)
    files_for = boot_files(sysroot.tmp, job.staging, job.kernel, job.request.initramfs, cmdline,
                           job.signer, job.pcr_signer)
    with files_for as files:
        digests = {name: payloads.file_digest(path) for name, path in files.items()}
        payload = Payload(job.os_name, payloads.name_for(job.kernel.version, digests.values()))
        reclaimable = reclaimable_bytes(sysroot, job.state)
        if payloads.install(sysroot.boot_path, payload, files, digests, reclaimable=reclaimable):
            job.new_payload = payload
        recorded = tuple(
            PayloadFile(name, digests[name], _tree_path(job.staging, path))
            for name, path in files.items()
        )
    job.deployment = dep.with_changes(payload=payload.name, payload_files=recorded)


def _tree_path(tree: Path, path: Path) -> str | None:
    """`path` relative to `tree`, if it is in it (else bootkit built it)."""
    for base, inner in ((tree, path), (tree.resolve(), path.resolve())):
        with contextlib.suppress(ValueError):
            return str(inner.relative_to(base))
    return None


def _settle(job: Job) -> None:
    """Record the deployment as in flight with its metadata, make the tree durable, then
    give it its final name in one rename.

    From the in-flight record on, an interrupted deploy leaves what the next command
    recognizes and removes (see `bootkit.sysroot.leftovers`).
    """
    assert job.deployment is not None and job.report is not None
    sysroot, dep = job.sysroot, job.deployment
    final = sysroot.deployment_dir(dep.os, dep.id)
    metadata = sysroot.metadata_path(dep.os, dep.id)
    if any(p.is_symlink() or p.exists() for p in (final, metadata)):
        raise BootkitError(
            f"deployment {dep.ref} exists already",
            hint="'bootkit fsck' shows what is on disk; then deploy again",
        )
    job.state.with_changes(in_flight=(*job.state.in_flight, dep.ref)).save(sysroot.state_path)
    job.recorded = True
    job.deployment = dep = dep.with_changes(
        content_digest=job.report.content_digest, os_digest=job.report.os_digest
    )
    dep.save(metadata)
    syncfs(job.staging)
    os.rename(job.staging, final)
    job.settled = True
    fsync_dir(final.parent)


def _record_staged(job: Job) -> Deployment:
    """Leave the deployment in flight, for `bootkit finalize-staged` to list at shutdown."""
    assert job.deployment is not None
    request, sysroot = job.request, job.sysroot
    # Its serial number is taken even if it is discarded: ids and failure records name it.
    state = sysroot.state()
    state.with_changes(serial=max(state.serial, job.serial)).save(sysroot.state_path)
    staged.record(sysroot, job.deployment, request.make_default, request.tries, request.lock,
                  kargs_given=request.kargs is not None)
    return job.deployment


def _commit(job: Job) -> Deployment:
    """List the deployment in the state and switch the boot configuration to include it."""
    dep, state, request = job.deployment, job.state, job.request
    assert dep is not None
    new_state = state.with_changes(
        serial=job.serial,
        deployments=(*state.deployments, dep.ref),
        default=dep.ref if request.make_default or state.default is None else state.default,
    )
    # The new entry is counted with `tries` (default: the sysroot's setting).
    arm = {dep.ref: request.tries} if request.tries is not None else None
    transaction.commit(job.sysroot, new_state, arm)
    with contextlib.suppress(OSError):  # tidying only: the update is in place
        staged.forget_failure(job.sysroot)  # it replaces the one that failed
    return dep
