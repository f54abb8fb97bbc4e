"""fsck of the records: the state, each deployment's metadata and tree, leftovers, and
what nothing explains. Repairs rebuild; nothing the admin may need is deleted."""

from __future__ import annotations

import time
from pathlib import Path, PurePosixPath

from bootkit.base.files import atomic_copy
from bootkit.boot import payloads
from bootkit.boot.payloads import PAYLOAD_ROOT, Payload
from bootkit.boot.switch import BootView
from bootkit.contract import BOOTKIT_ARG, bootkit_arg, is_valid_name
from bootkit.errors import BootkitError
from bootkit.formats.bls import BootEntry, EntryName
from bootkit.records.deployment import Deployment, PayloadFile
from bootkit.records.state import State
from bootkit.sysroot import imageargs, inventory, leftovers
from bootkit.sysroot.fsck.findings import Kind, Problem, Report
from bootkit.sysroot.inventory import STAGING_PREFIX, TEMP_SUFFIX, Found
from bootkit.sysroot.layout import Sysroot

# Where a record that cannot be read is kept when a repair replaces it.
DAMAGED_DIR = "damaged"


def undeploy_hint(ref: str) -> str:
    return f"'bootkit undeploy {ref}' removes it"


def read_state(sr: Sysroot, report: Report) -> tuple[State | None, Problem | None]:
    """The recorded state (None if missing or unreadable), and the problem with it."""
    try:
        recorded = State.load(sr.state_path)
    except BootkitError as err:
        return None, report.add(Kind.STATE, rel(sr, sr.state_path), err.message)
    if recorded is None and inventory.found_on_disk(sr):
        return None, report.add(
            Kind.STATE, rel(sr, sr.state_path), "missing, while deployments are on disk"
        )
    return recorded, None


def check_leftovers(sr: Sysroot, report: Report, state: State, view: BootView) -> None:
    """What an interrupted command left (see `bootkit.sysroot.leftovers`); removed first,
    so that a full disk gets room for the repairs."""
    shown = leftovers.shown(view)
    found = leftovers.found(sr, state, shown)
    problems = [
        report.add(Kind.LEFTOVER, rel(sr, p), "left by an interrupted bootkit command") for p in found
    ]
    if report.repair and found:
        leftovers.discard(sr, state, shown)
        for p in problems:
            p.repaired = "removed"


def check_deployments(
    sr: Sysroot, report: Report, recorded: State | None, view: BootView
) -> list[Problem]:
    """Each deployment the state lists or the disk holds; returns the problems that a
    state rebuilt from the disk repairs. Without a recorded state, that it lists
    nothing goes without saying."""
    unlisted_is_news = recorded is not None
    recorded = recorded or State()
    found = inventory.found_on_disk(sr)
    listed = set(recorded.deployments)
    leaving = set(recorded.in_flight) - listed  # leftovers: see check_leftovers
    fixed_by_state: list[Problem] = []
    for ref in sorted((listed | set(found)) - leaving):
        f = found.get(ref)
        if f is None:
            fixed_by_state.append(report.add(
                Kind.STATE, ref, "the state lists it, but neither its tree nor its metadata is there"
            ))
        elif f.metadata is None:
            fixed_by_state += _check_metadata(sr, report, f, ref in listed, view)
        elif not f.has_tree:
            problem = report.add(Kind.TREE, ref, f"its tree {sr.deployment_dir(f.os, f.id)} is "
                                 "missing; its metadata is left", hint=undeploy_hint(ref))
            fixed_by_state += [problem] if ref in listed else []
        elif ref not in listed and unlisted_is_news:
            fixed_by_state.append(report.add(Kind.STATE, ref, "on disk, but the state does not list it"))
    report.checked["deployments"] = len(found)
    return fixed_by_state


def _check_metadata(
    sr: Sysroot, report: Report, f: Found, listed: bool, view: BootView
) -> list[Problem]:
    what = f.error.message if f.error else "its metadata file is missing"
    if not f.has_tree:
        report.add(Kind.METADATA, f.ref, f"{what}; its tree is missing too", hint=undeploy_hint(f.ref))
        return []
    dep = from_entry(sr, f, view)
    if dep is None:
        problem = report.add(
            Kind.METADATA, f.ref, f"{what}; no boot entry is left to rebuild it from",
            hint=f"deploy its source again; {undeploy_hint(f.ref)} (its /etc goes with it)",
        )
        return [problem] if listed else []
    problem = report.add(Kind.METADATA, f.ref, what)
    if report.repair:
        path = sr.metadata_path(f.os, f.id)
        kept = f"; the old file is kept as {rel(sr, keep_aside(sr, path))}" if path.exists() else ""
        dep.save(path)
        problem.repaired = f"rebuilt from its boot entry{kept}"
    return []


def from_entry(sr: Sysroot, f: Found, view: BootView) -> Deployment | None:
    """Metadata for `f` made from the newest entry that boots it, with its tree; None if
    no entry does, or the entry names no payload of this stateroot."""
    entry = _newest_entry(view, f.path)
    if entry is None:
        return None
    parts = PurePosixPath(entry.efi or entry.linux).parts
    if len(parts) != 5 or parts[1] != PAYLOAD_ROOT or parts[2] != f.os or not is_valid_name(parts[3]):
        return None
    payload = Payload(f.os, parts[3])
    kver = payload.name.rpartition("-")[0]
    options = entry.options.split()
    at = next((i for i, o in enumerate(options) if o.startswith(f"{BOOTKIT_ARG}=")), len(options))
    image_kargs, kargs = _split_kargs(sr.deployment_dir(f.os, f.id), tuple(options[at + 1:]))
    return Deployment(
        os=f.os,
        id=f.id,
        version=entry.version,
        source="unknown (rebuilt from its boot entry)",
        kernel_version=kver,
        payload=payload.name,
        title=entry.title,
        created=sr.deployment_dir(f.os, f.id).stat().st_mtime,
        serial=inventory.serial_of(f.id) or 0,
        kargs=kargs,
        image_kargs=image_kargs,
        uki=bool(entry.efi),
        payload_files=_verified_files(sr, payload, kver, bool(entry.efi)),
    )


def _split_kargs(tree: Path, kargs: tuple[str, ...]) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """An entry's own kernel arguments as the image's and the admin's: the image's come
    first, as its tree ships them; if the entry does not start with those, all are taken
    for the admin's, so none is lost."""
    try:
        image = imageargs.read_image_kargs(tree)
    except (BootkitError, OSError):
        image = ()
    if kargs[: len(image)] == image:
        return image, kargs[len(image):]
    return (), kargs


def _newest_entry(view: BootView, path: str) -> BootEntry | None:
    best: tuple[int, BootEntry] | None = None
    for fname, entry in view.entries:
        name = EntryName.parse(fname)
        if name is not None and bootkit_arg(entry.options) == path and (
            best is None or name.generation > best[0]
        ):
            best = (name.generation, entry)
    return best[1] if best else None


def _verified_files(sr: Sysroot, payload: Payload, kver: str, uki: bool) -> tuple[PayloadFile, ...]:
    """The payload's files with their digests, if they still match the payload's name."""
    names = payloads.expected_files(uki)
    folder = payload.dir(sr.boot_path)
    if payloads.missing_files(sr.boot_path, payload, names):
        return ()
    digests = [payloads.file_digest(folder / n) for n in names]
    if payloads.name_for(kver, digests) != payload.name:
        return ()
    return tuple(PayloadFile(n, d) for n, d in zip(names, digests, strict=True))


def check_unexplained(sr: Sysroot, report: Report) -> None:
    """Names in the deploy directories that no deployment, deploy or write explains."""
    hint = "bootkit did not make it; remove it if nothing needs it"
    root = sr.meta / "deploy"
    known = {os_name for os_name, _ in inventory.deploy_dirs(sr)}
    for d in sorted(root.iterdir()) if root.is_dir() else []:
        if d.name not in known:
            report.add(Kind.UNEXPLAINED, rel(sr, d), "not a stateroot", hint=hint)
    for _, ddir in inventory.deploy_dirs(sr):
        for p in sorted(ddir.iterdir()):
            if not _explained(p):
                report.add(Kind.UNEXPLAINED, rel(sr, p), "not a deployment or its metadata",
                           hint=hint)


def _explained(p: Path) -> bool:
    if p.name.startswith(".") and (p.name.startswith(STAGING_PREFIX) or p.name.endswith(TEMP_SUFFIX)):
        return True
    stem = p.name.removesuffix(".json")
    if not is_valid_name(stem) or p.is_symlink():
        return False
    return p.is_file() if p.name.endswith(".json") else p.is_dir()


def keep_aside(sr: Sysroot, path: Path) -> Path:
    """Copy a record that cannot be read to /bootkit/damaged/, where nothing reads it,
    before a repair writes the record anew."""
    folder = sr.meta / DAMAGED_DIR
    folder.mkdir(exist_ok=True)
    stamp = time.strftime("%Y%m%dT%H%M%S")
    name = f"{stamp}-{'-'.join(path.relative_to(sr.meta).parts)}"
    kept = folder / name
    n = 1
    while kept.exists():
        n += 1
        kept = folder / f"{name}.{n}"
    atomic_copy(path, kept)
    return kept


def rel(sr: Sysroot, path: Path) -> str:
    """`path` as seen from the physical root: /bootkit/..., /efi/..."""
    try:
        return "/" + str(path.relative_to(sr.path))
    except ValueError:
        return str(path)
