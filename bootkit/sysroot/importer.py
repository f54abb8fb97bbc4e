"""Importing a root tree (a directory or a tar archive) as a new deployment tree.

Regular files under `usr/` go through a content store (`/bootkit/objects`): a file
whose content and metadata match one already stored becomes a hardlink to it, so a
deployment that differs from the previous one in a few files costs a few files of
disk. Files outside `usr/` (the live `/etc` among them) are copied, because they may
be written to at run time and a write must never reach another deployment.

"Metadata" is mode, owner and extended attributes, not mtime: trees rebuilt from the
same packages differ in little else, and sharing must survive a rebuild. A shared
file therefore carries the mtime of the copy that was stored first.
"""

from __future__ import annotations

import contextlib
import errno
import gzip
import hashlib
import json
import lzma
import os
import shutil
import stat
import subprocess
import tarfile
import time
import zlib
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import IO

from bootkit.base.files import atomic_write, fsync_dir
from bootkit.errors import BootkitError

Progress = Callable[[int], None]
IS_ROOT = os.geteuid() == 0
_ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"


@dataclass
class ImportReport:
    files: int = 0
    bytes: int = 0
    linked: int = 0  # files that reused an object already stored
    skipped: list[str] = field(default_factory=list)  # device nodes, sockets, fifos
    digest: str = ""  # identifies the tree's content


@dataclass(frozen=True)
class _Meta:
    mode: int
    uid: int
    gid: int
    xattrs: tuple[tuple[str, bytes], ...]
    mtime: float


def _object_key(content_hash: str, meta: _Meta) -> str:
    h = hashlib.sha256(content_hash.encode())
    h.update(f"\0{stat.S_IMODE(meta.mode):o}\0{meta.uid}\0{meta.gid}".encode())
    for name, value in meta.xattrs:
        h.update(b"\0" + name.encode() + b"=" + value)
    return h.hexdigest()


def _read_xattrs(path: str | Path) -> tuple[tuple[str, bytes], ...]:
    try:
        names = os.listxattr(path, follow_symlinks=False)
    except OSError:
        return ()
    if not names:
        return ()
    out = []
    for name in sorted(names):
        try:
            out.append((name, os.getxattr(path, name, follow_symlinks=False)))
        except OSError:
            continue
    return tuple(out)


def _apply_meta(path: str | Path, meta: _Meta, *, symlink: bool = False) -> None:
    if IS_ROOT:
        os.chown(path, meta.uid, meta.gid, follow_symlinks=False)
    for name, value in meta.xattrs:
        # Not every filesystem takes every namespace (security.* on tmpfs, say).
        with contextlib.suppress(OSError):
            os.setxattr(path, name, value, follow_symlinks=False)
    if not symlink:
        # chmod after chown: chown clears setuid/setgid bits.
        os.chmod(path, stat.S_IMODE(meta.mode))
    os.utime(path, (meta.mtime, meta.mtime), follow_symlinks=False)


class ObjectStore:
    """Files stored once by content and metadata, hardlinked into deployments."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.tmp = root / "tmp"
        self._subdirs: set[str] = set()  # object subdirectories known to exist

    def prepare(self) -> None:
        """Create the store's directories; before storing anything."""
        self.root.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.tmp.mkdir(mode=0o700, exist_ok=True)

    def path(self, key: str) -> Path:
        return self.root / key[:2] / key[2:]

    def link_into(self, key: str, dest: str, fill: Callable[[str], None], meta: _Meta) -> bool:
        """Hardlink object `key` to `dest`, storing it first with `fill` if new. True if reused."""
        obj = f"{self.root}/{key[:2]}/{key[2:]}"
        try:
            os.link(obj, dest)
            return True
        except FileNotFoundError:
            pass
        except OSError as err:
            if err.errno != errno.EMLINK:
                raise
            # Too many links to one inode (empty files, say): keep a private copy.
            fill(dest)
            _apply_meta(dest, meta)
            return False
        # New content: the tree's own copy becomes the stored object. Until the tree is
        # synced and recorded, nothing else links to it, so after a crash the orphaned
        # tree goes and the prune that follows takes the object with it.
        fill(dest)
        _apply_meta(dest, meta)
        subdir = obj[: obj.rindex("/")]
        if subdir not in self._subdirs:
            os.makedirs(subdir, exist_ok=True)
            self._subdirs.add(subdir)
        try:
            os.link(dest, obj)
        except FileExistsError:
            # Another thread stored the same content first: share its object instead.
            tmp = f"{dest}.bootkit-tmp"
            try:
                os.link(obj, tmp)
            except OSError as err:
                if err.errno != errno.EMLINK:
                    raise
                return False  # keep the private copy
            os.rename(tmp, dest)
            return True
        return False

    @property
    def _prune_marker(self) -> Path:
        return self.root / "prune-pending"

    def mark_prune_pending(self) -> None:
        """Record, durably, that objects are about to lose links: call before removing trees.

        A power cut between removing a tree and pruning would otherwise leave its
        objects stored forever, since nothing else says that a prune is needed.
        """
        try:
            fd = os.open(self._prune_marker, os.O_WRONLY | os.O_CREAT, 0o600)
        except FileNotFoundError:
            return  # no store yet, so nothing to prune
        os.close(fd)
        fsync_dir(self.root)

    def prune_pending(self) -> bool:
        return self._prune_marker.exists()

    def prune(self) -> int:
        """Remove objects no deployment links to; return bytes freed."""
        freed = 0
        if not self.root.is_dir():
            return 0
        for sub in self.root.iterdir():
            if sub == self.tmp:
                shutil.rmtree(sub, ignore_errors=True)
                sub.mkdir(mode=0o700)
                continue
            if not sub.is_dir():
                continue
            for obj in sub.iterdir():
                st = obj.lstat()
                if st.st_nlink == 1:
                    freed += st.st_size
                    obj.unlink()
            with contextlib.suppress(OSError):
                sub.rmdir()  # only if that emptied it
        self._prune_marker.unlink(missing_ok=True)
        return freed


def _dedup_eligible(rel: str) -> bool:
    return rel.startswith("usr/")


class HashCache:
    """Content hashes of a directory source's files, from the last import of that source.

    A file whose inode, size, mtime and ctime are unchanged keeps its hash, so that a
    redeploy of a big tree with a few changed files reads only those files. ctime
    cannot be set from user space, so a rewrite that restores the mtime is still
    seen. Entries changed too recently to be told apart from a change within the same
    clock tick are not kept.
    """

    RACY_NS = 2_000_000_000

    def __init__(self, path: Path, source: Path) -> None:
        self.path = path
        self.source = str(source.resolve())
        self.old: dict[str, list[int | str]] = {}
        self.new: dict[str, list[int | str]] = {}
        try:
            data = json.loads(path.read_text())
            if data.get("source") == self.source:
                self.old = data["files"]
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            pass  # no cache, or a damaged one: hash everything

    @staticmethod
    def _key(st: os.stat_result) -> list[int | str]:
        return [st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns]

    def get(self, rel: str, st: os.stat_result) -> str | None:
        entry = self.old.get(rel)
        if entry is not None and entry[:4] == self._key(st):
            self.new[rel] = entry
            return str(entry[4])
        return None

    def put(self, rel: str, st: os.stat_result, digest: str) -> None:
        self.new[rel] = [*self._key(st), digest]

    def save(self) -> None:
        limit = time.time_ns() - self.RACY_NS
        files = {rel: e for rel, e in self.new.items() if int(e[3]) < limit}
        atomic_write(self.path, json.dumps({"source": self.source, "files": files}))


class _Importer:
    """Builds the new tree; paths are plain strings here, as this runs once per file."""

    def __init__(self, dest: Path, store: ObjectStore, progress: Progress | None) -> None:
        self.dest = str(dest)
        self.store = store
        self.progress = progress or (lambda n: None)
        self.report = ImportReport()
        store.prepare()
        self.notes: list[str] = []  # what identifies the tree, one line per entry, in walk order
        self.dir_meta: list[tuple[str, _Meta]] = []

    def _note(self, rel: str, what: str, slot: int | None = None) -> None:
        # /var is handed to the shared /var or dropped, so it is no part of the tree's identity.
        if rel == "var" or rel.startswith("var/"):
            return
        if slot is None:
            self.notes.append(f"{rel}\0{what}\n")
        else:
            self.notes[slot] = f"{rel}\0{what}\n"

    def reserve_note(self) -> int:
        """A place in the walk order for an entry whose note comes later."""
        self.notes.append("")
        return len(self.notes) - 1

    def skip(self, rel: str, kind: str) -> None:
        self.report.skipped.append(f"/{rel} ({kind})")

    def add_dir(self, rel: str, meta: _Meta) -> None:
        path = f"{self.dest}/{rel}"
        if not os.path.isdir(path) or os.path.islink(path):
            os.mkdir(path, 0o700)
        # Modes are applied at the end: a read-only directory must still take its children.
        self.dir_meta.append((path, meta))
        self._note(rel, f"d{meta.mode:o}:{meta.uid}:{meta.gid}")

    def add_symlink(self, rel: str, target: str, meta: _Meta) -> None:
        path = f"{self.dest}/{rel}"
        os.symlink(target, path)
        _apply_meta(path, meta, symlink=True)
        self._note(rel, f"l{target}")

    def store_file(
        self, rel: str, meta: _Meta, content_hash: str, fill: Callable[[str], None]
    ) -> bool:
        """Put one regular file in place; True if it reused a stored object. Thread-safe."""
        path = f"{self.dest}/{rel}"
        if _dedup_eligible(rel):
            return self.store.link_into(_object_key(content_hash, meta), path, fill, meta)
        fill(path)
        _apply_meta(path, meta)
        return False

    def count_file(
        self,
        rel: str,
        meta: _Meta,
        content_hash: str,
        size: int,
        linked: bool,
        slot: int | None = None,
    ) -> None:
        self.report.files += 1
        self.report.bytes += size
        self.report.linked += linked
        self._note(rel, f"f{content_hash}:{meta.mode:o}:{meta.uid}:{meta.gid}", slot)

    def add_file(
        self,
        rel: str,
        meta: _Meta,
        content_hash: str,
        fill: Callable[[str], None],
        size: int,
    ) -> None:
        linked = self.store_file(rel, meta, content_hash, fill)
        self.count_file(rel, meta, content_hash, size, linked)

    def add_hardlink(self, rel: str, target: str) -> None:
        os.link(os.path.join(self.dest, target), os.path.join(self.dest, rel))
        self._note(rel, f"h{target}")

    def finish(self) -> ImportReport:
        for path, meta in reversed(self.dir_meta):
            _apply_meta(path, meta)
        tree_hash = hashlib.sha256()
        for note in self.notes:
            tree_hash.update(note.encode("utf-8", "surrogateescape"))
        self.report.digest = tree_hash.hexdigest()
        return self.report


def _meta_of(path: str, st: os.stat_result) -> _Meta:
    return _Meta(st.st_mode, st.st_uid, st.st_gid, _read_xattrs(path), st.st_mtime)


def _hash_file(path: str) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def _copier(src: str) -> Callable[[str], None]:
    def fill(dst: str) -> None:
        shutil.copyfile(src, dst, follow_symlinks=False)

    return fill


def _walk(src: str, rel: str, prune: frozenset[str]) -> Iterator[tuple[str, os.DirEntry[str]]]:
    with os.scandir(f"{src}/{rel}" if rel else src) as it:
        entries = sorted(it, key=lambda e: e.name)
    for entry in entries:
        child = f"{rel}/{entry.name}" if rel else entry.name
        yield child, entry
        if entry.is_dir(follow_symlinks=False) and child not in prune:
            yield from _walk(src, child, prune)


# Below this many files one thread is quicker than starting more.
PARALLEL_FILES = 256
_WORKERS = min(8, 2 * (os.cpu_count() or 1))


def import_directory(
    src: Path,
    dest: Path,
    store: ObjectStore,
    progress: Progress | None = None,
    cache: HashCache | None = None,
    contents_dropped: frozenset[str] = frozenset(),
) -> ImportReport:
    """Import the directory `src`; the contents of `contents_dropped` (top-level names)
    are not read: the caller discards them anyway."""
    imp = _Importer(dest, store, progress)
    root = str(src)
    imp.add_dir(".", _meta_of(root, os.stat(root)))
    # Directories and symlinks as the walk finds them; regular files afterwards, so that
    # several threads can hash and copy them (hashing and file creation both let go of
    # the GIL), while their notes keep their place in the walk order.
    files: list[tuple[int, str, str, os.stat_result]] = []
    for rel, entry in _walk(root, "", contents_dropped):
        path = entry.path
        st = entry.stat(follow_symlinks=False)
        mode = st.st_mode
        if stat.S_ISDIR(mode):
            imp.add_dir(rel, _meta_of(path, st))
        elif stat.S_ISLNK(mode):
            imp.add_symlink(rel, os.readlink(path), _meta_of(path, st))
        elif stat.S_ISREG(mode):
            files.append((imp.reserve_note(), rel, path, st))
        else:
            imp.skip(rel, _kind(mode))

    Placed = tuple[int, str, _Meta, str, int, bool]

    def place(item: tuple[int, str, str, os.stat_result], digest: str | None = None) -> Placed:
        slot, rel, path, st = item
        if digest is None:
            digest = _hash_file(path)
            if cache:
                cache.put(rel, st, digest)
        meta = _meta_of(path, st)
        return slot, rel, meta, digest, st.st_size, imp.store_file(rel, meta, digest, _copier(path))

    def record(placed: Placed) -> None:
        slot, rel, meta, digest, size, linked = placed
        imp.count_file(rel, meta, digest, size, linked, slot)
        imp.progress(size)

    # A file under usr/ whose hash the cache knows costs one link to the stored
    # object: cheaper here than handing it to a thread. The rest are read or copied.
    to_read: list[tuple[int, str, str, os.stat_result]] = []
    digests: list[str | None] = []
    for item in files:
        digest = cache.get(item[1], item[3]) if cache else None
        if digest is not None and _dedup_eligible(item[1]):
            record(place(item, digest))
        else:
            to_read.append(item)
            digests.append(digest)
    if len(to_read) < PARALLEL_FILES:
        for item, digest in zip(to_read, digests, strict=True):
            record(place(item, digest))
    else:
        pool = ThreadPoolExecutor(_WORKERS, thread_name_prefix="bootkit-import")
        try:
            for placed in pool.map(place, to_read, digests):
                record(placed)
        finally:
            pool.shutdown(wait=True, cancel_futures=True)
    return imp.finish()


def _kind(mode: int) -> str:
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "device node"
    if stat.S_ISSOCK(mode):
        return "socket"
    if stat.S_ISFIFO(mode):
        return "fifo"
    return "special file"


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
    imp: _Importer, name: str, meta: _Meta, f: IO[bytes], size: int, tmp: str
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
    imp = _Importer(dest, store, progress)
    seen_files: set[PurePosixPath] = set()
    known_dirs: set[str] = set()
    tmp_member = os.path.join(store.tmp, f"member.{os.getpid()}")
    root_meta: _Meta | None = None
    try:
        with _open_tar_stream(src, imp.progress) as tf:
            for m in tf:
                rel = _member_path(m.name)
                meta = _Meta(m.mode | _type_bits(m), m.uid, m.gid, _pax_xattrs(m), float(m.mtime))
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


def import_source(
    src: Path,
    dest: Path,
    store: ObjectStore,
    progress: Progress | None = None,
    cache: HashCache | None = None,
    contents_dropped: frozenset[str] = frozenset(),
) -> ImportReport:
    """Import `src` (directory or tar archive) into the fresh directory `dest`.

    `cache` and `contents_dropped` apply to a directory source only (see import_directory).
    """
    if src.is_dir():
        dest.mkdir()
        return import_directory(src, dest, store, progress, cache, contents_dropped)
    if src.is_file():
        dest.mkdir()
        return import_tar(src, dest, store, progress)
    raise BootkitError(
        f"source {src} does not exist", hint="give a directory or a tar archive of a root tree"
    )


def source_size(src: Path) -> int:
    """Bytes the progress bar will count for `src`."""
    if src.is_file():
        return src.stat().st_size
    total = 0
    for root, _dirs, files in os.walk(src):
        for name in files:
            try:
                st = os.lstat(os.path.join(root, name))
            except OSError:
                continue
            if stat.S_ISREG(st.st_mode):
                total += st.st_size
    return total
