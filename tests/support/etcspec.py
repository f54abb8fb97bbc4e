"""/etc trees described as specs ({path: File, Dir or Link}), built and read back."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class File:
    content: str
    mode: int = 0o644


@dataclass(frozen=True)
class Dir:
    mode: int = 0o755


@dataclass(frozen=True)
class Link:
    target: str


Spec = dict[str, "str | File | Dir | Link"]
GONE = object()


def normalized(spec: Spec) -> dict[str, File | Dir | Link]:
    return {rel: File(v) if isinstance(v, str) else v for rel, v in spec.items()}


def build(root: Path, spec: Spec) -> Path:
    root.mkdir(parents=True)
    for rel, value in sorted(normalized(spec).items()):
        path = root / rel
        if isinstance(value, Dir):
            path.mkdir()
            path.chmod(value.mode)
        elif isinstance(value, Link):
            path.symlink_to(value.target)
        else:
            path.write_text(value.content)
            path.chmod(value.mode)
    return root


def snapshot(root: Path) -> dict[str, File | Dir | Link]:
    found: dict[str, File | Dir | Link] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = Path(dirpath, name)
            rel = str(path.relative_to(root))
            if path.is_symlink():
                found[rel] = Link(os.readlink(path))
            elif path.is_dir():
                found[rel] = Dir(path.stat().st_mode & 0o7777)
            else:
                found[rel] = File(path.read_text(), path.stat().st_mode & 0o7777)
    return found


def edit(spec: Spec, changes: dict[str, object]) -> Spec:
    """`spec` with some paths replaced or GONE; a path that stops being a directory
    loses its content."""
    result = dict(spec)
    for rel, value in sorted(changes.items()):
        if value is GONE or not isinstance(value, Dir):
            result = {r: v for r, v in result.items() if not r.startswith(f"{rel}/")}
        if value is GONE:
            result.pop(rel, None)
        else:
            result[rel] = value  # type: ignore[assignment]
    return result


BASE: Spec = {
    "hosts": "127.0.0.1 localhost\n",
    "issue": "Debian GNU/Linux 12\n",
    "ssh": Dir(),
    "ssh/sshd_config": "PermitRootLogin no\n",
    "motd.d": Dir(),
    "motd.d/welcome": "hello\n",
    "localtime": Link("/usr/share/zoneinfo/UTC"),
}
