"""The names in an ext4 filesystem, listed strictly before anything is copied out of it.

A filesystem in an image was written by whoever ran the image, so its directories
may hold what no kernel would create: a name with a `/` in it (`../../tmp/x`), a
second `..`, the same name twice (a symlink, then a file through it), a directory
linked into itself. Copying such a tree out writes through those names, outside the
copy, or never ends. `list_tree` reads every directory with `ls -l -r`, which prints
one entry per line with every byte below 32, above 126 and `\\` escaped as `\\xNN`
(and names in encrypted directories as they are stored), and refuses the tree at the
first entry that is not a plain, unique name of one of the known kinds of file.
"""

from __future__ import annotations

import re
import stat
from dataclasses import dataclass
from pathlib import Path

from bootkit.base.filetypes import FileType
from bootkit.diskimage import debugfs
from bootkit.errors import BootkitError

ROOT_INODE = 2
_HINT = ("the image may be malicious or damaged: bootkit copies out only trees a kernel "
         "could have made; repair the filesystem with e2fsck, or rebuild the image")

# "  INODE  MODE (DIRENT-TYPE)  UID  GID  SIZE DD-Mon-YYYY HH:MM NAME"
_LINE = re.compile(
    r"\A *(?P<inode>\d+) +(?P<mode>[0-7]+) +\(\d+\) +(?P<uid>-?\d+) +(?P<gid>-?\d+) +\d+ +"
    r"\d+-[A-Za-z]{3}-\d+ \d\d:\d\d (?P<name>.*)\Z"
)
# A slot no name uses (inode 0): listed, but neither rdump nor a kernel reads it.
_UNUSED = re.compile(r"\A *0 ")
_ESCAPED = re.compile(r"\\x([0-9a-fA-F]{2})")
_PRINTED = re.compile(r"\A(?:[ -\[\]-~]|\\x[0-9a-fA-F]{2})*\Z")
_DOTS = (".", "..")


@dataclass(frozen=True)
class Entry:
    inode: int
    mode: int
    uid: int
    gid: int
    path: str  # from the root, names joined by "/" (no name holds one)

    @property
    def kind(self) -> FileType:
        return FileType.of_mode(self.mode)

    @property
    def parent(self) -> str:
        return self.path.rpartition("/")[0]

    @property
    def name(self) -> str:
        return self.path.rpartition("/")[2]


ROOT = Entry(ROOT_INODE, stat.S_IFDIR, 0, 0, "")


def shown(path: str) -> str:
    """How a message names a path of the filesystem: `/a/b`, with odd bytes escaped."""
    return "/" + path.encode("utf-8", "surrogateescape").decode("ascii", "backslashreplace")


def _refused(what: str) -> BootkitError:
    return BootkitError(f"the root filesystem {what}", hint=_HINT)


def _name(text: str, directory: str) -> str:
    """The name as stored, from its printed form."""
    if not _PRINTED.match(text):
        raise _refused(f"lists an unreadable name {text!r} in {shown(directory)}")
    raw = _ESCAPED.sub(lambda m: chr(int(m[1], 16)), text).encode("latin-1")
    return raw.decode("utf-8", "surrogateescape")


def _parse_line(line: str, directory: str) -> tuple[str, int, int, int, int]:
    m = _LINE.match(line)
    if m is None:
        raise _refused(f"lists {line!r} in {shown(directory)}, which bootkit cannot read")
    return (_name(m["name"], directory), int(m["inode"]), int(m["mode"], 8),
            int(m["uid"]) & 0xFFFFFFFF, int(m["gid"]) & 0xFFFFFFFF)


def _entries(output: str, directory: str) -> list[Entry]:
    """The entries of one directory's listing, `.` and `..` left out."""
    lines = output.split("\n")
    while lines and not lines[-1]:
        lines.pop()
    found: list[Entry] = []
    names: set[str] = set()
    for index, line in enumerate(line for line in lines if not _UNUSED.match(line)):
        name, inode, mode, uid, gid = _parse_line(line, directory)
        where = f"{directory}/{name}" if directory else name
        if index < 2 and name == _DOTS[index]:
            continue
        if not name or "/" in name or name in _DOTS:
            raise _refused(f"holds a name {name!r} in {shown(directory)}, which no directory may hold")
        if name in names:
            raise _refused(f"holds the name {shown(where)} twice")
        try:
            FileType.of_mode(mode)
        except ValueError:
            raise _refused(f"holds {shown(where)} of no known file type (mode {mode:o})") from None
        names.add(name)
        found.append(Entry(inode, mode, uid, gid, where))
    return found


def list_tree(image: Path, offset: int) -> list[Entry]:
    """Every name in the filesystem below its root, parents first; one debugfs run per level.

    Refused with a BootkitError naming the place: a line that does not parse, a name
    holding `/`, `.` or `..` anywhere but as a directory's first two entries, a name
    twice in one directory, a directory reached a second time (a loop or a hard link).
    """
    entries: list[Entry] = []
    seen_dirs = {ROOT_INODE: ""}
    level = [ROOT]
    while level:
        outputs = debugfs.answers(image, offset, [f"ls -l -r <{d.inode}>" for d in level])
        next_level: list[Entry] = []
        for directory, output in zip(level, outputs, strict=True):
            for entry in _entries(output, directory.path):
                entries.append(entry)
                if entry.kind is not FileType.DIR:
                    continue
                other = seen_dirs.setdefault(entry.inode, entry.path)
                if other != entry.path:
                    raise _refused(f"holds the directory {shown(other)} a second time, "
                                   f"as {shown(entry.path)}")
                next_level.append(entry)
        level = next_level
    return entries
