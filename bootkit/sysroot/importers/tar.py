"""Importing a tar archive (plain, gzip, xz, bzip2 or zstd) as one stream."""

from __future__ import annotations

import gzip
import hashlib
import lzma
import os
import shutil
import stat
import subprocess
import tarfile
import zlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path, PurePosixPath
from typing import IO

from bootkit.errors import BootkitError
from bootkit.sysroot.importers.tree import ImportReport, Progress, TreeBuilder
from bootkit.sysroot.store import FileMeta, ObjectStore

_ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"


def _member_path(name: str) -> PurePosixPath:
    if name.startswith("/"):
        raise BootkitError(
            f"tar member {name!r} has an absolute path",
            hint="build the archive relative to the tree's root",
        )
    parts = [p for p in PurePosixPath(name).parts if p != "."]
    if ".." in parts:
        raise BootkitError(
            f"tar member {name!r} contains '..'", hint="the archive may be malicious; rebuild it"
        )
    return PurePosixPath(*parts) if parts else PurePosixPath(".")


def _escapes(rel: PurePosixPath, target: str) -> bool:
    """Whether a relative symlink at `rel` points above the tree's root."""
    if target.startswith("/"):
        return False  # resolved against the deployment's own root at boot
    depth = len(rel.parent.parts) if str(rel.parent) != "." else 0
    for part in PurePosixPath(target).parts:
        if part == "..":
            depth -= 1
            if depth < 0:
                return True
        elif part != ".":
            depth += 1
    return False


class _CountingReader:
    def __init__(self, f: IO[bytes], progress: Progress) -> None:
        self.f = f
        self.progress = progress

    def read(self, n: int = -1) -> bytes:
        data = self.f.read(n)
        self.progress(len(data))
        return data


@contextmanager
def _open_tar_stream(src: Path, progress: Progress) -> Iterator[tarfile.TarFile]:
    with open(src, "rb") as raw:
        magic = raw.read(4)
        raw.seek(0)
        if magic == _ZSTD_MAGIC:
            if shutil.which("zstd") is None:
                raise BootkitError(
                    f"{src} is zstd-compressed and the 'zstd' program is missing",
                    hint="install zstd",
                )
            proc = subprocess.Popen(["zstd", "-dcq"], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
            assert proc.stdin and proc.stdout
            import threading

            def pump() -> None:
                try:
                    shutil.copyfileobj(_CountingReader(raw, progress), proc.stdin)  # type: ignore[arg-type]
                except BrokenPipeError:
                    pass
                finally:
                    proc.stdin.close()  # type: ignore[union-attr]

            t = threading.Thread(target=pump, daemon=True)
            t.start()
            try:
                with tarfile.open(fileobj=proc.stdout, mode="r|") as tf:
                    yield tf
            finally:
                proc.stdout.close()
                t.join()
                rc = proc.wait()
            if rc != 0:
                raise BootkitError(
                    f"{src}: zstd could not decompress it (exit {rc})",
                    hint="the archive is corrupt",
                )
        else:
            with tarfile.open(fileobj=_CountingReader(raw, progress), mode="r|*") as tf:  # type: ignore[call-overload]
                yield tf


# Tar members up to this size are read into memory rather than spooled to a file.
_IN_MEMORY = 1 << 20


def _writer(data: bytes) -> Callable[[str], None]:
    def fill(dst: str) -> None:
        with open(dst, "xb") as out:
            out.write(data)

    return fill


def _add_spooled(
    imp: TreeBuilder, name: str, meta: FileMeta, f: IO[bytes], size: int, tmp: str
) -> None:
    """Add a large member: spooled to `tmp` while hashed, then renamed into place if new."""
    h = hashlib.sha256()
    with open(tmp, "wb") as out:
        while block := f.read(1 << 20):
            h.update(block)
            out.write(block)

    def fill(dst: str) -> None:
        os.rename(tmp, dst)

    imp.add_file(name, meta, h.hexdigest(), fill, size)
    if os.path.lexists(tmp):
        os.unlink(tmp)


def import_tar(
    src: Path, dest: Path, store: ObjectStore, progress: Progress | None = None
) -> ImportReport:
    imp = TreeBuilder(dest, store, progress)
    seen_files: set[PurePosixPath] = set()
    known_dirs: set[str] = set()
    tmp_member = os.path.join(store.tmp, f"member.{os.getpid()}")
    root_meta: FileMeta | None = None
    try:
        with _open_tar_stream(src, imp.progress) as tf:
            for m in tf:
                rel = _member_path(m.name)
                meta = FileMeta(m.mode | _type_bits(m), m.uid, m.gid, _pax_xattrs(m), float(m.mtime))
                if str(rel) == ".":
                    if m.isdir():
                        root_meta = meta
                    continue
                _check_parents(dest, rel, m.name, known_dirs)
                _check_new(dest, rel, m)
                name = str(rel)
                if m.isdir():
                    imp.add_dir(name, meta)
                elif m.issym():
                    if _escapes(rel, m.linkname):
                        raise BootkitError(
                            f"tar member {m.name!r} is a symlink that escapes the tree ({m.linkname!r})",
                            hint="the archive may be malicious; rebuild it",
                        )
                    imp.add_symlink(name, m.linkname, meta)
                elif m.islnk():
                    target = _member_path(m.linkname)
                    if target not in seen_files:
                        raise BootkitError(
                            f"tar member {m.name!r} is a hardlink to {m.linkname!r}, which is not an earlier file in the archive",
                            hint="the archive may be malicious or truncated",
                        )
                    imp.add_hardlink(name, str(target))
                    seen_files.add(rel)
                elif m.isreg():
                    f = tf.extractfile(m)
                    assert f is not None
                    if m.size <= _IN_MEMORY:
                        # Most files of a tree are small and most are stored already:
                        # hashing them in memory spares a file written and removed.
                        data = f.read()
                        imp.add_file(name, meta, hashlib.sha256(data).hexdigest(),
                                     _writer(data), m.size)
                    else:
                        _add_spooled(imp, name, meta, f, m.size, tmp_member)
                    seen_files.add(rel)
                else:
                    imp.skip(
                        name,
                        "device node"
                        if m.ischr() or m.isblk()
                        else "fifo"
                        if m.isfifo()
                        else "special file",
                    )
    except (tarfile.TarError, EOFError, zlib.error, lzma.LZMAError, gzip.BadGzipFile) as err:
        raise BootkitError(
            f"{src} is not a readable tar archive: {err}",
            hint="check the file; it may be truncated or corrupt",
        ) from None
    if root_meta is not None:
        imp.dir_meta.insert(0, (str(dest), root_meta))
    return imp.finish()


def _type_bits(m: tarfile.TarInfo) -> int:
    if m.isdir():
        return stat.S_IFDIR
    if m.issym():
        return stat.S_IFLNK
    return stat.S_IFREG


def _pax_xattrs(m: tarfile.TarInfo) -> tuple[tuple[str, bytes], ...]:
    prefix = "SCHILY.xattr."
    return tuple(
        sorted(
            (k[len(prefix) :], v.encode("utf-8", "surrogateescape"))
            for k, v in m.pax_headers.items()
            if k.startswith(prefix)
        )
    )


def _check_parents(dest: Path, rel: PurePosixPath, name: str, known_dirs: set[str]) -> None:
    """Refuse a member whose parent directories are missing or are symlinks.

    `known_dirs` holds the parents checked already: a directory stays one, since no
    later member may take a path that exists (see _check_new).
    """
    parent = str(rel.parent)
    if parent == "." or parent in known_dirs:
        return
    cur = str(dest)
    done = ""
    for part in rel.parent.parts:
        cur = f"{cur}/{part}"
        done = f"{done}/{part}" if done else part
        if done in known_dirs:
            continue
        try:
            st = os.lstat(cur)
        except FileNotFoundError:
            os.mkdir(cur, 0o755)
        else:
            if not stat.S_ISDIR(st.st_mode):
                raise BootkitError(
                    f"tar member {name!r} would be written through {done}, which is not a directory",
                    hint="the archive may be malicious; rebuild it",
                )
        known_dirs.add(done)


def _check_new(dest: Path, rel: PurePosixPath, m: tarfile.TarInfo) -> None:
    """Refuse a member whose path an earlier member already took (a directory may repeat)."""
    try:
        st = (dest / rel).lstat()
    except FileNotFoundError:
        return
    if not (m.isdir() and stat.S_ISDIR(st.st_mode)):
        raise BootkitError(
            f"tar member {m.name!r} appears more than once in the archive",
            hint="rebuild the archive with each path once",
        )

