"""Deployments as the disk has them, whatever the state says.

For what must work while records are damaged: removing a deployment whose tree
or metadata is gone, showing the others, rebuilding a lost state, and `bootkit fsck`.
Reading only.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from bootkit.boot import payloads
from bootkit.boot.payloads import Payload
from bootkit.boot.switch import BootView
from bootkit.contract import bootkit_arg, deployment_path, is_valid_name
from bootkit.errors import BootkitError
from bootkit.records import staged
from bootkit.records.deployment import Deployment
from bootkit.records.state import State
from bootkit.sysroot.paths import SysrootPaths

# A deploy builds its tree under this name in the stateroot's deploy/ directory.
STAGING_PREFIX = ".staging-"
TEMP_SUFFIX = ".bootkit-tmp"
_SERIAL_RE = re.compile(r"\A(\d+)-")


@dataclass(frozen=True)
class Found:
    """One deployment as the disk has it: a metadata file, a tree, or both."""

    os: str
    id: str
    metadata: Deployment | None  # None: no metadata file, or one that cannot be read
    error: BootkitError | None  # why the metadata file could not be read
    has_metadata_file: bool
    has_tree: bool

    @property
    def ref(self) -> str:
        return f"{self.os}/{self.id}"

    @property
    def path(self) -> str:
        return deployment_path(self.os, self.id)


def serial_of(dep_id: str) -> int | None:
    """The serial number an id starts with (`<serial>-<digest>`), if it does."""
    m = _SERIAL_RE.match(dep_id)
    return int(m[1]) if m else None


def deploy_dirs(sr: SysrootPaths) -> list[tuple[str, Path]]:
    """Each stateroot with a valid name, and its deploy/ directory."""
    root = sr.meta / "deploy"
    if not root.is_dir():
        return []
    return [
        (d.name, d / "deploy")
        for d in sorted(root.iterdir())
        if is_valid_name(d.name) and not d.is_symlink() and (d / "deploy").is_dir()
    ]


def found_on_disk(sr: SysrootPaths) -> dict[str, Found]:
    """Every `<os>/<id>` with a metadata file or a tree, by ref."""
    names: dict[tuple[str, str], tuple[bool, bool]] = {}
    for os_name, ddir in deploy_dirs(sr):
        for p in ddir.iterdir():
            stem = p.name.removesuffix(".json")
            if not is_valid_name(stem) or p.is_symlink():
                continue
            meta, tree = names.get((os_name, stem), (False, False))
            if p.name.endswith(".json") and p.is_file():
                meta = True
            elif p.name == stem and p.is_dir():
                tree = True
            names[os_name, stem] = (meta, tree)
    out = {}
    for (os_name, dep_id), (meta, tree) in sorted(names.items()):
        dep, error = None, None
        if meta:
            try:
                dep = Deployment.load(sr.metadata_path(os_name, dep_id))
            except BootkitError as err:
                error = err
        found = Found(os_name, dep_id, dep, error, meta, tree)
        out[found.ref] = found
    return out


def readable(sr: SysrootPaths, refs: Iterable[str]) -> tuple[list[Deployment], dict[str, BootkitError]]:
    """The deployments `refs` whose metadata loads, and why the others' does not."""
    deps: list[Deployment] = []
    errors: dict[str, BootkitError] = {}
    for ref in refs:
        try:
            deps.append(sr.load(ref))
        except BootkitError as err:
            errors[ref] = err
    return deps, errors


def staged_ref(sr: SysrootPaths, state: State) -> str | None:
    """The deployment a live staged record names: staged on this sysroot since the last
    boot, and still in flight. Every command keeps its tree, metadata and payload."""
    ref = _run_record_ref(sr)
    if ref is None or ref in state.deployments or ref not in state.in_flight:
        return None
    return ref


def _run_record_ref(sr: SysrootPaths) -> str | None:
    try:
        record = staged.load_run_record()
    except (BootkitError, OSError):
        return None  # unreadable: what it named is a leftover, removed as such
    return record.ref if record is not None and record.is_for(sr.path) else None


def staged_payload(sr: SysrootPaths, state: State) -> Payload | None:
    """The payload on $BOOT of the staged deployment, which no entry boots yet."""
    ref = staged_ref(sr, state)
    if ref is None:
        return None
    try:
        dep = sr.load(ref)
    except BootkitError:
        return None
    return Payload(dep.os, dep.payload) if dep.payload else None


def why_unbootable(
    sr: SysrootPaths,
    dep: Deployment,
    boot: Path,
    seen: dict[tuple[Payload, tuple[str, ...]], list[str]] | None = None,
) -> str | None:
    """Why an entry for `dep` would not boot now (its tree or a boot file is missing).

    `seen`: what earlier calls of one pass found missing, by payload and file names;
    deployments that share a kernel share its files, which are looked up once then.
    """
    if not sr.tree(dep).is_dir():
        return f"its tree {sr.tree(dep)} is missing"
    payload = Payload(dep.os, dep.payload)
    names = tuple(f.name for f in dep.payload_files) or payloads.expected_files(dep.uki)
    seen = {} if seen is None else seen
    if (payload, names) not in seen:
        seen[payload, names] = payloads.missing_files(boot, payload, names)
    missing = seen[payload, names]
    if missing:
        return f"{' and '.join(missing)} of its boot files ({payload.dir(boot)}) missing"
    return None


def highest_serial(sr: SysrootPaths, state: State) -> int:
    """The highest serial number the state or any deployment on disk has taken."""
    on_disk = [serial_of(f.id) or 0 for f in found_on_disk(sr).values()]
    return max([state.serial, *on_disk])


def default_on_boot(view: BootView) -> str | None:
    """The deployment path the entry that sorts first boots."""
    best: tuple[int, ...] | None = None
    path = None
    for fname, entry in view.entries:
        name = view.names.get(fname)
        if name is None:
            continue
        key = name.precedence
        if best is None or key > best:
            best, path = key, bootkit_arg(entry.options)
    return path


def rebuilt_state(sr: SysrootPaths, recorded: State | None, view: BootView | None) -> State:
    """A state made from the disk: every deployment whose metadata loads and whose tree
    is there, oldest first, but for what the recorded state names as in flight.

    The default is the recorded one if it is among them, else the deployment that
    the first entry on $BOOT boots, else the newest. Serial and
    generation continue above every number the state, the disk and $BOOT used.
    """
    recorded = recorded or State()
    # A staged deployment stays out of the menu, in flight, as a lost state had it.
    staged_ref = _run_record_ref(sr)
    if staged_ref is not None and staged_ref not in (*recorded.in_flight, *recorded.deployments):
        recorded = recorded.with_changes(in_flight=(*recorded.in_flight, staged_ref))
    found = found_on_disk(sr)
    deps = sorted(
        (
            f.metadata
            for f in found.values()
            if f.metadata is not None and f.has_tree and f.ref not in recorded.in_flight
        ),
        key=lambda d: (d.serial, d.id),
    )
    refs = tuple(d.ref for d in deps)
    default = recorded.default if recorded.default in refs else None
    on_boot = default_on_boot(view) if view is not None else None
    default = default or next((d.ref for d in deps if d.path == on_boot), None)
    default = default or (refs[-1] if refs else None)
    generations = view.generations if view is not None else set()
    return State(
        generation=max([recorded.generation, *generations]),
        serial=highest_serial(sr, recorded),
        default=default,
        deployments=refs,
        in_flight=recorded.in_flight,
    )
