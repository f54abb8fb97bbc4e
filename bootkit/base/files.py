"""Durable file operations: every write is temp file + fsync + rename + fsync of the directory."""

from __future__ import annotations

import contextlib
import ctypes
import os
import shutil
import stat
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _load_syncfs() -> Callable[[int], int] | None:
    try:
        return ctypes.CDLL(None, use_errno=True).syncfs
    except (OSError, AttributeError):
        return None


# Python has no os.syncfs; sync() instead would flush every filesystem on the machine.
_syncfs = _load_syncfs()


def syncfs(path: Path) -> None:
    """Flush the whole filesystem holding `path` (one call instead of one fsync per file)."""
    if _syncfs is None:
        os.sync()
        return
    fd = os.open(path, os.O_RDONLY)
    try:
        if _syncfs(fd) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"syncfs {path}: {os.strerror(err)}")
    finally:
        os.close(fd)


def temp_name(path: Path) -> Path:
    # Bootloaders read only names they know (*.conf, grub.cfg, ...), so a
    # leftover from a crash is never mistaken for a real file.
    return path.with_name(f".{path.name}.bootkit-tmp")


def _write_temp(path: Path, chunks: Iterable[bytes], mode: int, sync: bool) -> Path:
    tmp = temp_name(path)
    # Never through a symlink left at the temp name, as in a tree someone else made.
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, mode)
    with _removed_on_error(tmp):
        try:
            for chunk in chunks:
                view = memoryview(chunk)
                while view:
                    view = view[os.write(fd, view) :]
            if sync:
                os.fsync(fd)
        finally:
            os.close(fd)
        os.chmod(tmp, mode)
    return tmp


@contextlib.contextmanager
def _removed_on_error(tmp: Path) -> Iterator[None]:
    """A temp file that a failed write (a full disk, say) must not leave behind; the
    error names the file when the call that failed did not (write, fsync)."""
    try:
        yield
    except OSError as err:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        if err.filename is None:
            raise OSError(err.errno, err.strerror, str(tmp)) from err
        raise


def write_unsynced(path: Path, data: bytes, mode: int = 0o644) -> Path:
    """Write `data` to the temp name beside `path` without syncing; return the temp path.

    For batches: write many, `syncfs` once, then `os.rename` each into place.
    """
    return _write_temp(path, (data,), mode, sync=False)


def atomic_write(path: Path, data: bytes | str, mode: int = 0o644) -> None:
    """Replace `path` with `data` so that a crash leaves the old or the new content."""
    atomic_write_chunks(path, (data.encode() if isinstance(data, str) else data,), mode)


def atomic_write_chunks(path: Path, chunks: Iterable[bytes], mode: int = 0o644) -> None:
    """`atomic_write` of the concatenation of `chunks`, which is never all in memory."""
    tmp = _write_temp(path, chunks, mode, sync=True)
    with _removed_on_error(tmp):
        os.rename(tmp, path)
    fsync_dir(path.parent)


def copy_synced(src: Path, dest: Path, mode: int = 0o644, chunk: int = 1 << 20) -> None:
    """Copy `src` to `dest`, a name no reader knows yet, and fsync it; the caller publishes it."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW
    with open(src, "rb") as fin, open(os.open(dest, flags, 0o600), "wb") as fout:
        while block := fin.read(chunk):
            fout.write(block)
        fout.flush()
        os.fsync(fout.fileno())
    os.chmod(dest, mode)


def atomic_copy(src: Path, dest: Path, mode: int = 0o644, chunk: int = 1 << 20) -> None:
    """Copy `src` to `dest` durably, never leaving a partial `dest`."""
    tmp = temp_name(dest)
    with _removed_on_error(tmp):
        copy_synced(src, tmp, mode, chunk)
        os.rename(tmp, dest)
    fsync_dir(dest.parent)


def atomic_copy_into(directory: Path, files: Mapping[str, Path], mode: int = 0o644) -> None:
    """Make `directory` (new) hold a durable copy of each source under its name, all at once.

    The copies go to a temp directory beside it, are synced, and appear in one rename,
    so a crash leaves the complete directory or none (only the temp one, to remove).
    """
    tmp = temp_name(directory)
    shutil.rmtree(tmp, ignore_errors=True)
    os.mkdir(tmp)
    try:
        for name, src in files.items():
            copy_synced(src, tmp / name, mode)
        fsync_dir(tmp)
        os.rename(tmp, directory)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    fsync_dir(directory.parent)


def atomic_symlink(target: str, link: Path) -> None:
    """Make `link` point to `target`, replacing whatever `link` was in one rename."""
    tmp = temp_name(link)
    remove_file(tmp)
    os.symlink(target, tmp)
    os.rename(tmp, link)
    fsync_dir(link.parent)


def remove_file(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)


def remove_tree(path: Path) -> None:
    """Remove the directory `path` and everything in it; nothing to do if it is gone.

    A read-only directory inside the tree (a deployment's, say) stops the removal of
    its entries unless one is root; then every directory of the tree is made writable
    and the removal tried once more.
    """
    try:
        shutil.rmtree(path)
    except FileNotFoundError:
        if os.path.lexists(path):
            raise
    except PermissionError:
        _open_up(path)
        shutil.rmtree(path)


def _open_up(root: Path) -> None:
    """Give the owner full access to `root` and every directory below it."""
    _allow_owner(str(root))
    for parent, dirs, _files in os.walk(root):
        # os.walk lists a directory only after it is yielded, so each child is
        # opened up here, before the walk needs to read it.
        for name in dirs:
            _allow_owner(os.path.join(parent, name))


def _allow_owner(path: str) -> None:
    st = os.lstat(path)
    if stat.S_ISDIR(st.st_mode) and st.st_mode & stat.S_IRWXU != stat.S_IRWXU:
        os.chmod(path, stat.S_IMODE(st.st_mode) | stat.S_IRWXU)


def remove_path(path: Path) -> None:
    """Remove whatever `path` is (file, symlink or directory tree); nothing if it is gone."""
    if path.is_dir() and not path.is_symlink():
        remove_tree(path)
    else:
        remove_file(path)


@contextlib.contextmanager
def temp_path_cleanup(path: Path) -> Iterator[Path]:
    """Yield `path`; remove it if the block fails, so nothing half-made stays behind."""
    try:
        yield path
    except BaseException:
        # The failure that got here is the one to report, not one of the cleanup.
        with contextlib.suppress(OSError):
            remove_path(path)
        raise
