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
import itertools
import os
import stat
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

_ENCODING = ("utf-8", "surrogateescape")
# Top-level parts of a tree that a deploy or the running system changes.
CHANGING = ("etc", "usr/etc", "var")


# A note as an importer makes it: `<rel>\0<what>\n`, as text or encoded (as a tree
# of a million files keeps them: one bytes object each, no more).
Note = str | bytes


def content_digest(notes: Iterable[Note], leave_out: Iterable[str] = ("var",)) -> str:
    """The digest of a tree from an importer's notes (`<rel>\\0<what>\\n` each), without
    the paths in or under `leave_out`."""
    return _digest(_resolved(notes, tuple(leave_out)))


def both_digests(notes: Iterable[Note]) -> tuple[str, str]:
    """`content_digest(notes)` and `os_digest(notes)`, with the notes read once."""
    lines = _resolved(notes, ("var",))
    changing = _under(CHANGING)
    return _digest(lines), _digest([line for line in lines if not changing(_rel_of(line))])


def os_digest(notes: Iterable[Note], replaced: Iterable[str] = (), now: Iterable[Note] = ()) -> str:
    """The digest of what a deployment keeps as imported: all but /etc, /usr/etc, /var.

    `replaced`: paths a deploy changed after the import, each with all below it, whose
    notes no longer hold; `now`: notes, as `note_of` makes them, of what is there instead.
    """
    # Hardlinks are resolved first: a file whose earlier name was replaced is still there.
    gone = _under(tuple(replaced))
    added = _resolved(now, CHANGING)
    added_rels = {_rel_of(line) for line in added}
    kept = [line for line in _resolved(notes, CHANGING)
            if not gone(_rel_of(line)) and _rel_of(line) not in added_rels]
    kept += added
    kept.sort()
    return _digest(kept)


def _under(prefixes: tuple[str, ...]) -> Callable[[bytes], bool]:
    """Whether an encoded path is one of `prefixes` or below one. Made once per digest:
    it runs for every path of a tree, so the comparisons are left to bytes methods."""
    encoded = tuple(p.encode(*_ENCODING) for p in prefixes)
    exact = frozenset(encoded)
    below = tuple(p + b"/" for p in encoded)
    return lambda rel: rel in exact or rel.startswith(below)


def _rel_of(line: bytes) -> bytes:
    return line[: line.index(b"\0")]


def _line(note: Note) -> bytes:
    """A note encoded, ending in exactly the newline that ends each line of a digest."""
    line = note if isinstance(note, bytes) else note.encode(*_ENCODING)
    if b"\0" not in line:
        line = line.removesuffix(b"\n") + b"\0\n"  # a path with nothing noted of it
    return line if line.endswith(b"\n") else line + b"\n"


def _resolved(notes: Iterable[Note], leave_out: tuple[str, ...]) -> list[bytes]:
    """The lines a digest hashes, sorted: one per path, what each path is, hardlinks
    resolved to what their target is.

    A tree's notes are not copied: the lines are the notes themselves (a list of
    references), but for hardlinks and notes that were text."""
    if not isinstance(notes, list):
        notes = list(notes)  # read twice should a path be noted twice
    lines: list[bytes] = []
    links: dict[bytes, bytes] = {}
    for note in notes:
        line = _line(note)
        cut = line.index(b"\0")
        if cut == 0 or line[:cut] == b".":
            continue
        if line[cut + 1 : cut + 2] == b"h":
            links[line[:cut]] = line[cut + 2 : -1]
        else:
            lines.append(line)
    if links:
        lines += _resolved_links(lines, links)
    left_out = _under(leave_out)
    lines = [line for line in lines if not left_out(_rel_of(line))]
    lines.sort()  # by path: the NUL after each sorts before any byte a longer path has
    if _repeated(lines):
        return _resolved_repeats(notes, left_out)
    return lines


def _final_target(rel: bytes, links: dict[bytes, bytes]) -> bytes:
    target, seen = links[rel], {rel}
    while target in links and target not in seen:  # a link to an earlier link
        seen.add(target)
        target = links[target]
    return target


def _resolved_links(lines: list[bytes], links: dict[bytes, bytes]) -> list[bytes]:
    """The lines of `links`' paths, each what its target is; links are resolved before
    anything is left out: a file kept may be a link to one left out (usr/share/x to
    usr/etc/x), and on disk it is that file."""
    targets = {rel: _final_target(rel, links) for rel in links}
    wanted = set(targets.values())
    what = {_rel_of(line): line[line.index(b"\0") + 1 :] for line in lines
            if _rel_of(line) in wanted}
    return [rel + b"\0" + what.get(target, b"h" + target + b"\n")
            for rel, target in targets.items()]


def _repeated(lines: list[bytes]) -> bool:
    """Whether a path has two lines: all of a path's are side by side once sorted."""
    return any(_rel_of(a) == _rel_of(b) for a, b in itertools.pairwise(lines))


def _resolved_repeats(notes: Iterable[Note], left_out: Callable[[bytes], bool]) -> list[bytes]:
    """`_resolved` for notes that name a path more than once: the last note of a path
    holds, a hardlink's over any other."""
    what: dict[bytes, bytes] = {}
    links: dict[bytes, bytes] = {}
    for note in notes:
        line = _line(note)
        cut = line.index(b"\0")
        rel, kind = line[:cut], line[cut + 1 :]
        if not rel or rel == b".":
            continue
        if kind.startswith(b"h"):
            links[rel] = kind[1:-1]
        else:
            what[rel] = kind
    for rel in links:
        target = _final_target(rel, links)
        what[rel] = what.get(target, b"h" + target + b"\n")
    return sorted(rel + b"\0" + kind for rel, kind in what.items() if not left_out(rel))


def _digest(lines: list[bytes]) -> str:
    """The digest of sorted lines, hashed a slice at a time: one joined copy of a big
    tree's lines would take as much memory as the lines themselves."""
    h = hashlib.sha256()
    for start in range(0, len(lines), _SLICE):
        h.update(b"".join(lines[start : start + _SLICE]))
    return h.hexdigest()


_SLICE = 4096


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
