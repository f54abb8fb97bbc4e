"""fsck of $BOOT: each payload's files against the digests recorded at deploy time, and
the entries against the state. A damaged boot file is copied again from the
deployment's tree when the tree's file still has the recorded content."""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from pathlib import Path, PurePosixPath

from bootkit.boot import payloads
from bootkit.boot.entries import render_entry
from bootkit.boot.payloads import Payload
from bootkit.contract import bootkit_arg
from bootkit.errors import BootkitError
from bootkit.formats.bls import EntryName
from bootkit.records.deployment import Deployment
from bootkit.records.state import State
from bootkit.sysroot import inventory, leftovers, transaction
from bootkit.sysroot.fsck.findings import Kind, Problem, Report
from bootkit.sysroot.fsck.records import rel
from bootkit.sysroot.kernel import find_kernel
from bootkit.sysroot.layout import Sysroot


def check_payloads(sr: Sysroot, report: Report, deps: Sequence[Deployment]) -> None:
    """Every payload the deployments use; with --repair, copy damaged files again."""
    users: dict[Payload, list[Deployment]] = {}
    for dep in deps:
        users.setdefault(Payload(dep.os, dep.payload), []).append(dep)
    for payload, those in users.items():
        _check_payload(sr, report, payload, those)
    report.checked["payloads"] = len(users)


def _check_payload(sr: Sysroot, report: Report, payload: Payload, users: list[Deployment]) -> None:
    recorded = _recorded_digests(users)
    names = list(recorded) or list(payloads.expected_files(users[0].uki))
    bad = _bad_files(sr.boot_path, payload, names, recorded)
    if not bad:
        return
    what = ", ".join(f"{n} {why}" for n, why in bad.items())
    refs = ", ".join(u.ref for u in users)
    problem = report.add(Kind.PAYLOAD, rel(sr, payload.dir(sr.boot_path)), f"{what} (boots {refs})")
    if not report.repair:
        return
    sources = _sources(sr, users, payload, names, recorded)
    if not set(bad) <= set(sources):
        problem.hint = (
            f"no deployment's tree holds the same {' and '.join(sorted(set(bad) - set(sources)))} "
            f"(bootkit builds initramfs images and UKIs itself): deploy the source of {refs} "
            "again, or remove them with 'bootkit undeploy'"
        )
        return
    payloads.restore(sr.boot_path, payload, {n: sources[n] for n in bad})
    shown = ", ".join(rel(sr, sources[n]) for n in bad)
    problem.repaired = f"copied again from {shown}"


def _recorded_digests(users: list[Deployment]) -> dict[str, str]:
    for dep in users:
        if dep.payload_files:
            return {f.name: f.sha256 for f in dep.payload_files}
    return {}


def _bad_files(
    boot: Path, payload: Payload, names: list[str], recorded: dict[str, str]
) -> dict[str, str]:
    """name -> "missing" or "changed". Without recorded digests (metadata older than
    them), the files together must still give the payload's name."""
    missing = payloads.missing_files(boot, payload, names)
    bad = dict.fromkeys(missing, "missing")
    if recorded:
        changed = set(payloads.damaged_files(boot, payload, recorded)) - set(missing)
        return bad | dict.fromkeys(sorted(changed), "changed")
    if missing:
        return bad
    digests = [payloads.file_digest(payload.dir(boot) / n) for n in names]
    if payloads.name_for(_kver(payload), digests) != payload.name:
        return dict.fromkeys(names, "changed (the files no longer give the payload's name)")
    return {}


def _kver(payload: Payload) -> str:
    return payload.name.rpartition("-")[0]


def _sources(
    sr: Sysroot, users: list[Deployment], payload: Payload, names: list[str],
    recorded: dict[str, str],
) -> dict[str, Path]:
    """Files in the users' trees with the content the payload must have, by name."""
    for dep in users:
        tree = sr.tree(dep)
        if not tree.is_dir():
            continue
        found = {n: p for n, p in _candidates(tree, dep, _kver(payload)).items() if n in names}
        if recorded:
            good = {n: p for n, p in found.items() if payloads.file_digest(p) == recorded.get(n)}
        elif set(found) == set(names):
            digests = [payloads.file_digest(found[n]) for n in names]
            good = found if payloads.name_for(_kver(payload), digests) == payload.name else {}
        else:
            good = {}
        if good:
            return good
    return {}


def _candidates(tree: Path, dep: Deployment, kver: str) -> dict[str, Path]:
    """Where the tree may hold each payload file: where the deploy recorded it came from,
    else where the tree's kernel and initramfs are."""
    out: dict[str, Path] = {}
    with contextlib.suppress(BootkitError, OSError):
        kernel = find_kernel(tree)
        if kernel.version == kver:
            out["linux"] = kernel.linux
            if kernel.initramfs is not None:
                out["initrd"] = kernel.initramfs
    for f in dep.payload_files:
        path = _inside(tree, f.source) if f.source else None
        if path is not None:
            out[f.name] = path
    return out


def _inside(tree: Path, source: str) -> Path | None:
    """`tree/source` if it is a regular file that resolves inside the tree."""
    rel_path = PurePosixPath(source)
    if rel_path.is_absolute() or ".." in rel_path.parts:
        return None
    path = tree / rel_path
    try:
        inside = path.resolve().is_relative_to(tree.resolve())
    except OSError:
        return None
    return path if inside and path.is_file() and not path.is_symlink() else None


def check_entries(
    sr: Sysroot, report: Report, state: State, deps: Sequence[Deployment]
) -> list[Problem]:
    """Whether $BOOT holds the state's boot configuration, each entry as bootkit writes it
    and booting files that are there; a commit of the state repairs what is found."""
    boot = sr.boot
    view = boot.view()
    config = sr.config
    found = [f"unreadable entry {name}: {why}" for name, why in view.bad_entries]
    if not boot.is_current(view, state.generation):
        found.append(f"not the complete generation {state.generation} that the state records")
    by_path = {d.path: d for d in deps}
    for fname, entry in view.entries:
        found += [f"entry {fname} boots {f}, which is missing" for f in entry.files
                  if not (boot.path / f.lstrip("/")).is_file()]
        name = EntryName.parse(fname)
        dep = by_path.get(bootkit_arg(entry.options) or "")
        if dep is not None and name is not None and render_entry(config, dep, name) != entry:
            found.append(f"entry {fname} differs from what bootkit writes for {dep.ref}")
    menu = {d.path for d in deps if inventory.why_unbootable(sr, d, boot.path) is None}
    found += [f"no entry boots {p}" for p in sorted(menu - leftovers.shown(view))]
    wanted = transaction.wanted_payloads(sr, state, deps)
    found += [f"payload {rel(sr, p.dir(boot.path))} is used by no deployment"
              for p in payloads.present(boot.path) if p not in wanted]
    report.checked["entries"] = len(view.entries)
    return [report.add(Kind.ENTRIES, rel(sr, boot.path), what) for what in found]
