"""Which deployment a new one of the same OS follows: its /etc and kernel arguments.

The running system is what the admin changed last, so the booted deployment is the
source when it belongs to the same OS; otherwise (deploying from outside, or into
another OS) it is the OS's first deployment in menu order, its default.
"""

from __future__ import annotations

from pathlib import Path

from bootkit.base.confined import Tree
from bootkit.contract import booted_deployment
from bootkit.records.deployment import Deployment
from bootkit.records.state import State
from bootkit.sysroot import etcmerge
from bootkit.sysroot.layout import Sysroot


def merge_source(sr: Sysroot, state: State, os_name: str) -> Deployment | None:
    """The booted deployment if it is one of `os_name`'s, else `os_name`'s first in the menu."""
    same_os = [d for d in sr.ordered(state) if d.os == os_name]
    booted = booted_deployment()
    return next((d for d in same_os if d.path == booted), None) or next(iter(same_os), None)


def has_live_etc(tree: Path) -> bool:
    """Whether the deployment at `tree` has a live etc; it and usr/etc must be directories."""
    confined = Tree(tree)
    confined.real_dir("usr/etc")
    return confined.real_dir("etc")


def build_etc(sr: Sysroot, source: Deployment | None, tree: Path, dest: Path) -> None:
    """The live /etc of the new tree at `dest` (which must not exist): its defaults plus
    the admin's changes in `source`'s /etc."""
    old = sr.tree(source) if source is not None else None
    if old is not None and has_live_etc(old):
        etcmerge.merge_etc(old / "usr/etc", old / "etc", tree / "usr/etc", dest)
    else:
        etcmerge.copy_etc(tree / "usr/etc", dest)
