"""Reading inside a tree as if chrooted into it: no symlink and no `..` leads out.

An OS tree is read by a process that is not running inside it, so its symlinks
mean something else here than at boot: `usr/lib/modules/6.1/initramfs.img ->
/boot/initrd.img` names the tree's own /boot, not the host's. `Tree` resolves a
path inside a tree the way the kernel would after `chroot`: one component at a
time, from a descriptor of the directory above it (`openat` with O_NOFOLLOW), so
that an absolute symlink starts again at the tree's root. A `..` that would climb
above the root, or a symlink loop, is refused with an error naming the path.

Files are opened only when they are regular files (never a fifo or a device), and
what is taken out of a tree is taken from the file that was opened and checked, so
a symlink swapped in between the check and the copy is never followed.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import stat
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path, PurePath, PurePosixPath
from typing import BinaryIO

from bootkit.base.filetypes import FileType
from bootkit.base.seen import DIR_FLAGS, READ_FLAGS, same_file
from bootkit.errors import BootkitError

# As many symlinks as Linux follows in one path lookup.
MAX_SYMLINKS = 40
_MALICIOUS = "the tree may be malicious: bootkit reads a tree only as its own root (/)"
_ROOT = PurePosixPath("/")

Rel = str | PurePath


def _parts(path: Rel) -> list[str]:
    return [p for p in str(path).split("/") if p not in ("", ".")]


class _Unresolvable(BootkitError):
    """A path that leads out of the tree, or into a symlink loop."""


@dataclass(frozen=True)
class _Found:
    """Where a lookup ended: the directory holding the object (an open descriptor, the
    caller's to close), its name there ("." when that directory is the object), and what
    lstat said about it."""

    parent: int
    name: str
    st: os.stat_result
    path: PurePosixPath  # from the tree's root, every symlink resolved


class Tree:
    """A directory tree whose paths are read as if the tree were the root (/)."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def describe(self, rel: Rel) -> str:
        """How a message names `rel`: `/usr/lib/os-release in /path/to/tree`."""
        return f"{_ROOT.joinpath(*_parts(rel))} in {self.root}"

    # --- finding things ---------------------------------------------------------------

    def _lookup(self, rel: Rel) -> _Found:
        """Resolve `rel` one component at a time, following every symlink inside the tree;
        FileNotFoundError or NotADirectoryError when it is not there."""
        held = [os.open(self.root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)]
        names: list[str] = []
        todo = list(reversed(_parts(rel)))
        links = 0
        try:
            while todo:
                part = todo.pop()
                if part == "..":
                    if len(held) == 1:
                        raise _Unresolvable(f"{self.describe(rel)} leads out of the tree",
                                            hint=_MALICIOUS)
                    os.close(held.pop())
                    names.pop()
                    continue
                try:
                    st = os.stat(part, dir_fd=held[-1], follow_symlinks=False)
                except FileNotFoundError:
                    raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT),
                                            self.describe(rel)) from None
                if stat.S_ISLNK(st.st_mode):
                    links += 1
                    if links > MAX_SYMLINKS:
                        raise _Unresolvable(f"{self.describe(rel)} is a symlink loop",
                                            hint=_MALICIOUS)
                    target = os.readlink(part, dir_fd=held[-1])
                    if target.startswith("/"):
                        while len(held) > 1:
                            os.close(held.pop())
                        names.clear()
                    todo.extend(reversed(_parts(target)))
                elif not todo:
                    return _Found(held.pop(), part, st, _ROOT.joinpath(*names, part))
                elif not stat.S_ISDIR(st.st_mode):
                    raise NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR),
                                             self.describe(rel))
                else:
                    held.append(os.open(part, DIR_FLAGS, dir_fd=held[-1]))
                    names.append(part)
            top = held.pop()
            return _Found(top, ".", os.fstat(top), _ROOT.joinpath(*names))
        finally:
            for fd in held:
                os.close(fd)

    @contextlib.contextmanager
    def _found(self, rel: Rel) -> Iterator[_Found]:
        found = self._lookup(rel)
        try:
            yield found
        finally:
            os.close(found.parent)

    def kind(self, rel: Rel, *, strict: bool = False) -> FileType | None:
        """What `rel` is, symlinks followed inside the tree; None if it is not there.

        A symlink that would lead out of the tree, or into a loop, leads nowhere inside
        it: it is dangling, as far as the tree goes (None), not an error. A symlink is
        data that a tree may well ship (a kernel's `build` link to the host's sources);
        only following it is confined, and what follows it (`open`, `resolve`, ...)
        refuses it by name. `strict` refuses it here already, for a caller that asks
        about a path it means to follow.
        """
        try:
            with self._found(rel) as found:
                return FileType.of_mode(found.st.st_mode)
        except (FileNotFoundError, NotADirectoryError):
            return None
        except _Unresolvable:
            if strict:
                raise
            return None

    def resolve(self, rel: Rel) -> PurePosixPath:
        """`rel` from the tree's root with every symlink resolved; FileNotFoundError if missing."""
        with self._found(rel) as found:
            return found.path

    def path(self, rel: Rel) -> Path:
        """Where `rel` is on the host: below the root, through real directories only."""
        return self.root.joinpath(*_parts(self.resolve(rel)))

    def listdir(self, rel: Rel) -> list[str]:
        """The names in directory `rel`, sorted; none if it is missing or not a directory."""
        if self.kind(rel) is not FileType.DIR:
            return []
        fd = self._open_dir(rel)
        try:
            return sorted(os.listdir(fd))
        finally:
            os.close(fd)

    def real_dir(self, rel: Rel, hint: str | None = None) -> bool:
        """Whether `rel` is a directory reached through directories only, no symlink
        followed: True if so, False if it (or a parent) is missing; BootkitError, naming
        the path, if any component is a symlink or something else than a directory."""
        done: list[str] = []
        for part in _parts(rel):
            done.append(part)
            try:
                st = os.lstat(self.root.joinpath(*done))
            except FileNotFoundError:
                return False
            if not stat.S_ISDIR(st.st_mode):
                kind = FileType.of_mode(st.st_mode)
                raise BootkitError(
                    f"{self.describe('/'.join(done))} is a {kind.description}, not a directory",
                    hint=hint or _MALICIOUS,
                )
        return True

    def make_dirs(self, rel: Rel, mode: int = 0o755) -> Path:
        """The directory `rel`, its missing parts made (each found as `resolve` finds it,
        so a symlink in the way is followed inside the tree); where it is on the host."""
        done = _ROOT
        for part in _parts(rel):
            try:
                done = self.resolve(done / part)
            except FileNotFoundError:
                fd = self._open_dir(done)
                try:
                    os.mkdir(part, mode, dir_fd=fd)
                finally:
                    os.close(fd)
                done = done / part
        if self.kind(done) is not FileType.DIR:
            raise NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR), self.describe(done))
        return self.root.joinpath(*_parts(done))

    # --- reading ----------------------------------------------------------------------

    @contextlib.contextmanager
    def _opened(self, rel: Rel) -> Iterator[tuple[_Found, BinaryIO]]:
        with self._found(rel) as found:
            kind = FileType.of_mode(found.st.st_mode)
            if kind is not FileType.FILE:
                raise BootkitError(
                    f"{self.describe(rel)} is a {kind.description}, not a regular file",
                    hint="ship a regular file there",
                )
            fd = os.open(found.name, READ_FLAGS, dir_fd=found.parent)
            with os.fdopen(fd, "rb") as f:
                if not same_file(os.fstat(fd), found.st):
                    raise BootkitError(f"{self.describe(rel)} changed while it was read",
                                       hint="nothing may write into the tree while bootkit reads it")
                yield found, f

    @contextlib.contextmanager
    def open(self, rel: Rel) -> Iterator[BinaryIO]:
        """The regular file at `rel`, open for reading."""
        with self._opened(rel) as (_found, f):
            yield f

    def read(self, rel: Rel, limit: int) -> bytes:
        """The content of the regular file at `rel`, refused when larger than `limit` bytes."""
        with self.open(rel) as f:
            data = f.read(limit + 1)
        if len(data) > limit:
            raise BootkitError(
                f"{self.describe(rel)} is larger than {limit} bytes",
                hint="the tree may be malicious; this file is small in every OS",
            )
        return data

    def _open_dir(self, rel: Rel) -> int:
        with self._found(rel) as found:
            return os.open(found.name, DIR_FLAGS, dir_fd=found.parent)

    # --- taking things out ------------------------------------------------------------

    def copy_out(self, rel: Rel, dest: Path) -> None:
        """Give the regular file at `rel` a new name `dest` outside the tree: a hardlink
        to the file that was checked where the filesystem allows one, else a copy of it."""
        with self._opened(rel) as (found, f):
            _take(found.parent, found.name, f, dest)

    def mirror(self, rel: Rel, dest: Path) -> None:
        """Make `dest` (new) hold the directory at `rel` as the tree sees it: directories,
        regular files (linked or copied), and symlinks that resolve to regular files
        inside the tree, as those files. Directory symlinks and special files stay out."""
        os.mkdir(dest, 0o700)
        pending = [(self.resolve(rel), dest)]
        while pending:
            at, into = pending.pop()
            fd = self._open_dir(at)
            try:
                with os.scandir(fd) as it:
                    entries = sorted(it, key=lambda e: e.name)
                for entry in entries:
                    if entry.is_dir(follow_symlinks=False):
                        os.mkdir(into / entry.name, 0o700)
                        pending.append((at / entry.name, into / entry.name))
                    elif entry.is_file(follow_symlinks=False):
                        _take_named(fd, entry.name, into / entry.name)
                    elif entry.is_symlink() and self.kind(at / entry.name) is FileType.FILE:
                        self.copy_out(at / entry.name, into / entry.name)
            finally:
                os.close(fd)


def _take_named(dir_fd: int, name: str, dest: Path) -> None:
    fd = os.open(name, READ_FLAGS, dir_fd=dir_fd)
    with os.fdopen(fd, "rb") as f:
        if stat.S_ISREG(os.fstat(fd).st_mode):
            _take(dir_fd, name, f, dest)


def _take(dir_fd: int, name: str, f: BinaryIO, dest: Path) -> None:
    """`dest` (new) becomes the open regular file `f`, found as `name` in `dir_fd`.

    The link is made without following a symlink, then checked to be that very file;
    where it cannot be (another filesystem, too many links) the file is copied.
    """
    opened = os.fstat(f.fileno())
    with contextlib.suppress(OSError):
        os.link(name, dest, src_dir_fd=dir_fd, follow_symlinks=False)
        if same_file(os.lstat(dest), opened):
            return
        os.unlink(dest)
    with open(dest, "xb") as out:
        f.seek(0)
        shutil.copyfileobj(f, out, 1 << 20)
