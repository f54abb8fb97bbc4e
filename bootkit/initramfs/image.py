"""The file tree of an initramfs being assembled, turned into cpio members at the end."""

from __future__ import annotations

import os
import stat
from pathlib import Path, PurePosixPath

from bootkit.errors import BootkitError
from bootkit.initramfs import cpio


def image_path(path: str | PurePosixPath) -> PurePosixPath:
    """`path` relative to the image root; absolute and relative spellings are the same file."""
    relative = PurePosixPath(str(path).lstrip("/"))
    if not relative.parts or ".." in relative.parts or relative.parts[0] == ".":
        raise BootkitError(f"invalid path in the initramfs: {path!r}")
    return relative


class ImageTree:
    """Paths -> members; parent directories appear on their own, later files replace earlier ones."""

    def __init__(self) -> None:
        self._members: dict[PurePosixPath, cpio.Member] = {}

    def __contains__(self, path: str | PurePosixPath) -> bool:
        return image_path(path) in self._members

    def __len__(self) -> int:
        return len(self._members)

    def get(self, path: str | PurePosixPath) -> cpio.Member | None:
        return self._members.get(image_path(path))

    def mkdir(self, path: str | PurePosixPath, mode: int = 0o755) -> None:
        key = image_path(path)
        self._make_parents(key)
        existing = self._members.get(key)
        if existing is not None and existing.kind != "dir":
            raise BootkitError(f"/{key} is already a {existing.kind} in the initramfs")
        if existing is None:
            self._members[key] = cpio.directory(str(key), mode)

    def add_file(self, path: str | PurePosixPath, data: bytes, mode: int = 0o644) -> None:
        self._put(cpio.regular_file(str(image_path(path)), data, mode))

    def add_symlink(self, path: str | PurePosixPath, target: str) -> None:
        self._put(cpio.symlink(str(image_path(path)), target))

    def add_char_device(
        self, path: str | PurePosixPath, major: int, minor: int, mode: int = 0o600
    ) -> None:
        self._put(cpio.char_device(str(image_path(path)), major, minor, mode))

    def add_host_file(self, source: Path, path: str | PurePosixPath | None = None) -> None:
        """Copy a host file's content and permission bits (symlinks are followed)."""
        try:
            data = source.read_bytes()
            mode = stat.S_IMODE(os.stat(source).st_mode)
        except OSError as err:
            raise BootkitError(f"cannot read {source}: {err.strerror}") from err
        self.add_file(path if path is not None else str(source), data, mode)

    def _put(self, member: cpio.Member) -> None:
        key = PurePosixPath(member.name)
        self._make_parents(key)
        existing = self._members.get(key)
        if existing is not None and existing.kind == "dir":
            raise BootkitError(f"/{key} is a directory in the initramfs, cannot replace it")
        self._members[key] = member

    def _make_parents(self, key: PurePosixPath) -> None:
        for parent in reversed(key.parents[:-1]):
            existing = self._members.get(parent)
            if existing is None:
                self._members[parent] = cpio.directory(str(parent))
            elif existing.kind != "dir":
                raise BootkitError(
                    f"/{parent} is a {existing.kind} in the initramfs, not a directory"
                )

    def members(self) -> list[cpio.Member]:
        """All members, each directory before what it contains, in a stable order."""
        return [self._members[key] for key in sorted(self._members, key=lambda p: p.parts)]

    def uncompressed_size(self) -> int:
        return sum(member.size for member in self._members.values())
