"""Extended attributes of an ext4 filesystem in an image file, read and set with debugfs.

rdump drops extended attributes (file capabilities, SELinux labels, what a guest's
programs set): `read_xattrs` reads them with `ea_list`/`ea_get`, and `write_xattrs`
sets them again in the new filesystem with `ea_set`, which needs no privilege,
unlike setting security.* on the host's copy.
"""

from __future__ import annotations

import re
import tempfile
from pathlib import Path

from bootkit.diskimage import debugfs, ext4tree, staged
from bootkit.errors import BootkitError

Attrs = tuple[tuple[str, bytes], ...]
# By inode number of the extracted copy on the host: hard links share them, and an
# edit that replaces a file gives it a new inode, so the old attributes do not follow.
Xattrs = dict[int, Attrs]

# ea_list prints "  NAME (LENGTH)" and, for values under 40 bytes, " = VALUE": a
# quoted string with \", \\ and \ooo escapes, or hex bytes.
_XATTR_LINE = re.compile(r"\A  (?P<name>\S+) \((?P<length>\d+)\)(?: = (?P<value>.*))?\Z")
_ESCAPE = re.compile(rb'\\([0-7]{3}|["\\])')
# Names that pass through debugfs's command line unquoted.
_SAFE_NAME = re.compile(r"\A[A-Za-z0-9._@:+-]+\Z")
# How ext4 stores small files inline: mke2fs decides that again for the new filesystem.
_INTERNAL = frozenset({"system.data"})


def _xattr_value(text: str) -> bytes:
    if text.startswith('"') and text.endswith('"') and len(text) >= 2:
        raw = text[1:-1].encode("utf-8", "surrogateescape")
        return _ESCAPE.sub(
            lambda m: bytes([int(m[1], 8)]) if len(m[1]) == 3 else m[1], raw
        )
    return bytes.fromhex(text)


def read_xattrs(image: Path, offset: int, inodes: list[int]) -> dict[int, Attrs]:
    """The extended attributes of each inode (only those that have any)."""
    if not inodes:
        return {}
    chunks = debugfs.answers(image, offset, [f"ea_list <{ino}>" for ino in inodes])
    found: dict[int, list[tuple[str, bytes | None]]] = {}
    for ino, chunk in zip(inodes, chunks, strict=True):
        for line in chunk.splitlines():
            m = _XATTR_LINE.match(line)
            if m is None or m["name"] in _INTERNAL:
                continue
            name, length = m["name"], int(m["length"])
            if not _SAFE_NAME.match(name):
                raise BootkitError(
                    f"cannot carry the extended attribute {name!r} of inode {ino}",
                    hint="remove it in the guest, or change the image from inside the guest",
                )
            value = _xattr_value(m["value"] or "") if m["value"] is not None or not length else None
            if value is not None and len(value) != length:
                value = None  # not what debugfs meant to print: fetched below instead
            found.setdefault(ino, []).append((name, value))
    # Long values are not printed: fetch those one by one into files.
    missing = [(ino, name) for ino, attrs in found.items() for name, value in attrs if value is None]
    fetched: dict[tuple[int, str], bytes] = {}
    if missing:
        with tempfile.TemporaryDirectory(prefix="bootkit-xattrs-") as tmp:
            files = [f"{tmp}/{n}" for n in range(len(missing))]
            debugfs.run_script(image, offset, [f"ea_get -f {f} <{ino}> {name}"
                                               for f, (ino, name) in zip(files, missing, strict=True)])
            for f, key in zip(files, missing, strict=True):
                try:
                    fetched[key] = Path(f).read_bytes()
                except FileNotFoundError:
                    raise BootkitError(
                        f"debugfs could not read the extended attribute {key[1]} of inode {key[0]}"
                    ) from None
    return {
        ino: tuple((name, value if value is not None else fetched[(ino, name)]) for name, value in attrs)
        for ino, attrs in found.items()
    }


def write_xattrs(image: Path, offset: int, tree: Path, xattrs: Xattrs) -> None:
    """Set, in the filesystem made from `tree`, the attributes `extract_tree` read."""
    if not xattrs:
        return
    commands: list[str] = []
    done: set[int] = set()
    with tempfile.TemporaryDirectory(prefix="bootkit-xattrs-") as tmp, staged.opened(tree) as top:
        for entry in [ext4tree.ROOT, *ext4tree.list_tree(image, offset)]:
            if entry.inode in done:
                continue
            done.add(entry.inode)
            for name, value in xattrs.get(staged.lstat(top, entry.path).st_ino, ()):
                value_file = f"{tmp}/{len(commands)}"
                Path(value_file).write_bytes(value)
                commands.append(f"ea_set -f {value_file} <{entry.inode}> {name}")
        if commands:
            debugfs.run_script(image, offset, commands, write=True)
