"""What an interrupted command leaves behind, and removing it.

Nothing is removed just because the state does not list it: the state may be
lost, unreadable or restored from a backup, and a deployment's tree holds the
admin's /etc. Without being asked to, bootkit removes only these:

- `.staging-*` directories in a stateroot's `deploy/`. A deploy builds its tree
  there, under the sysroot's lock, and gives it its final name only after
  recording it as in flight (below). Whoever removes one holds that lock, so the
  deploy that made it has died; no state, metadata or entry names it.
- temp files (`.*.bootkit-tmp`) of an interrupted atomic write, and files a
  command built in the sysroot's tmp directory: no reader ever opens them.
- the tree and metadata of a deployment that the state records as in flight
  without listing it. A deploy records its new deployment as in flight before
  the tree gets its final name, and lists it in the write that puts it into the
  boot configuration; an undeploy stops listing a deployment in the same write
  that records it as in flight. Either way the last request that completed was
  for it not to exist. It stays while an entry on $BOOT still names it: until
  $BOOT is switched, the old menu may boot it. It also stays while a live staged
  record names it (see `bootkit.records.staged`): a staged deploy keeps its
  deployment in flight until it is finalized at shutdown.

Anything else the state does not list is kept: `bootkit fsck` reports it and,
with --repair, lists it again.
"""

from __future__ import annotations

from collections.abc import Collection
from pathlib import Path

from bootkit.base.files import remove_path, remove_tree
from bootkit.boot.switch import BootView
from bootkit.contract import bootkit_arg, deployment_path
from bootkit.records.state import State
from bootkit.sysroot.inventory import STAGING_PREFIX, TEMP_SUFFIX, deploy_dirs, staged_ref
from bootkit.sysroot.layout import Sysroot


def shown(view: BootView) -> set[str]:
    """The deployment paths that some entry on $BOOT boots."""
    return {p for _, e in view.entries if (p := bootkit_arg(e.options)) is not None}


def found(sr: Sysroot, state: State, shown_paths: Collection[str] = ()) -> list[Path]:
    """Everything above that may go now; deployments that `shown_paths` name wait."""
    out: list[Path] = []
    for _, ddir in deploy_dirs(sr):
        out += [p for p in ddir.iterdir()
                if (p.name.startswith(STAGING_PREFIX) and p.is_dir() and not p.is_symlink())
                or (p.name.startswith(".") and p.name.endswith(TEMP_SUFFIX))]
    staged = staged_ref(sr, state)
    for ref in state.in_flight:
        os_name, _, dep_id = ref.partition("/")
        if ref in (staged, *state.deployments) or deployment_path(os_name, dep_id) in shown_paths:
            continue
        out += [p for p in (sr.metadata_path(os_name, dep_id), sr.deployment_dir(os_name, dep_id))
                if p.is_symlink() or p.exists()]
    out += [p for p in sr.meta.glob(f".*{TEMP_SUFFIX}")]
    if sr.tmp.is_dir():
        out += sorted(sr.tmp.iterdir())
    return out


def discard(sr: Sysroot, state: State, shown_paths: Collection[str] = ()) -> list[Path]:
    """Remove what `found` names, then the stored objects only those trees used."""
    doomed = found(sr, state, shown_paths)
    trees = [p for p in doomed if p.is_dir() and not p.is_symlink()]
    if trees:
        sr.objects.mark_prune_pending()
    for p in doomed:
        if p in trees:
            remove_tree(p)
        else:
            remove_path(p)
    if sr.objects.prune_pending():
        sr.objects.prune()
    return doomed
