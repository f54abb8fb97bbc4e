"""Digests of a tree's content: the same tree gives the same digest, whether it is
imported from a directory or from an archive, in whatever order, on any machine.

A digest hashes every path but the root and /var, in the byte order of the paths,
with what the importer noted of it: a directory's mode, owner and group; a
symlink's target; a regular file's content hash, mode, owner and group. A hardlink
counts as one more regular file with the same content: a directory walk sees two
files where an archive says that one member links to another. Left out, as in
the store (see `bootkit.sysroot.store`): mtimes and extended attributes; and what
is not imported at all (device nodes, fifos, sockets).

- `content_digest` names the imported tree; `bootkit status --json` shows it.
- `os_digest` leaves out /etc and /usr/etc as well, which a deploy and the running
  system change, so that it can be computed again from a deployment's tree on
  disk (`tree_notes`): `bootkit fsck` checks each tree against it. What a deploy
  changes elsewhere after the import (the desktop layout's symlinks, say) it
  reports with notes of what is there now, and the digest covers those instead.

The id digest (`ImportReport.digest`) is older and notes hardlinks and walk order
as the source has them, so it can differ between two imports of one tree.
"""

from __future__ import annotations

import hashlib
import os
import stat
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

_ENCODING = ("utf-8", "surrogateescape")
# Top-level parts of a tree that a deploy or the running system changes.
CHANGING = ("etc", "usr/etc", "var")


def content_digest(notes: Iterable[str], leave_out: Iterable[str] = ("var",)) -> str:
    """The digest of a tree from an importer's notes (`<rel>\\0<what>\\n` each), without
    the paths in or under `leave_out`."""
    return _digest(_resolved(notes, tuple(leave_out)))


def both_digests(notes: Iterable[str]) -> tuple[str, str]:
    """`content_digest(notes)` and `os_digest(notes)`, with the notes read once."""
    what = _resolved(notes, ("var",))
    changing = _under(CHANGING)
    return _digest(what), _digest({rel: kind for rel, kind in what.items() if not changing(rel)})


def os_digest(notes: Iterable[str], replaced: Iterable[str] = (), now: Iterable[str] = ()) -> str:
    """The digest of what a deployment keeps as imported: all but /etc, /usr/etc, /var.

    `replaced`: paths a deploy changed after the import, each with all below it, whose
    notes no longer hold; `now`: notes, as `note_of` makes them, of what is there instead.
    """
    what = _resolved(notes, CHANGING)
    gone = _under(tuple(replaced))
    # Hardlinks are resolved first: a file whose earlier name was replaced is still there.
    what = {rel: kind for rel, kind in what.items() if not gone(rel)}
    what |= _resolved(now, CHANGING)
    return _digest(what)


def _under(prefixes: tuple[str, ...]) -> Callable[[str], bool]:
    """Whether a path is one of `prefixes` or below one. Made once per digest: it runs
    for every path of a tree, so the comparisons are left to str methods."""
    exact = frozenset(prefixes)
    below = tuple(p + "/" for p in prefixes)
    return lambda rel: rel in exact or rel.startswith(below)


def _resolved(notes: Iterable[str], leave_out: tuple[str, ...]) -> dict[str, str]:
    """What each path is, hardlinks resolved to what their target is."""
    what: dict[str, str] = {}
    links: dict[str, str] = {}
    for note in notes:
        rel, _, kind = note.removesuffix("\n").partition("\0")
        if not rel or rel == ".":
            continue
        if kind.startswith("h"):
            links[rel] = kind[1:]
        else:
            what[rel] = kind
    # Links are resolved before anything is left out: a file kept may be a link to one
    # left out (usr/share/x to usr/etc/x), and on disk it is that file.
    for rel, target in links.items():
        seen = {rel}
        while target in links and target not in seen:  # a link to an earlier link
            seen.add(target)
            target = links[target]
        what[rel] = what.get(target, f"h{target}")
    left_out = _under(leave_out)
    return {rel: kind for rel, kind in what.items() if not left_out(rel)}


def _digest(what: dict[str, str]) -> str:
    h = hashlib.sha256()
    # Each path is encoded once, for the sort and for the hash; one update for all lines.
    encoded = sorted((rel.encode(*_ENCODING), kind) for rel, kind in what.items())
    h.update(b"".join(rel + b"\0" + kind.encode(*_ENCODING) + b"\n" for rel, kind in encoded))
    return h.hexdigest()


def tree_notes(tree: Path, file_hash: Callable[[str, os.stat_result], str]) -> Iterator[str]:
    """Notes, as an importer makes them, of a tree on disk, but for the parts a deploy
    changes; `file_hash(path, stat)` gives a regular file's content hash."""
    for parent, dirs, files in os.walk(tree):  # symlinks are not followed
        rel_parent = os.path.relpath(parent, tree)
        dirs[:] = [d for d in dirs if _rel(rel_parent, d) not in CHANGING]
        for name in sorted(dirs + files):
            rel = _rel(rel_parent, name)
            if rel in CHANGING:
                continue
            note = note_of(tree, rel, file_hash)
            if note is not None:
                yield note


def note_of(tree: Path, rel: str, file_hash: Callable[[str, os.stat_result], str]) -> str | None:
    """The note of `rel` in the tree on disk, as `tree_notes` makes it; None for what an
    importer leaves out (device nodes, fifos, sockets)."""
    path = os.path.join(tree, rel)
    st = os.lstat(path)
    if stat.S_ISDIR(st.st_mode):
        return f"{rel}\0d{st.st_mode:o}:{st.st_uid}:{st.st_gid}\n"
    if stat.S_ISLNK(st.st_mode):
        return f"{rel}\0l{os.readlink(path)}\n"
    if stat.S_ISREG(st.st_mode):
        return f"{rel}\0f{file_hash(path, st)}:{st.st_mode:o}:{st.st_uid}:{st.st_gid}\n"
    return None


def _rel(parent: str, name: str) -> str:
    return name if parent == "." else f"{parent}/{name}"
