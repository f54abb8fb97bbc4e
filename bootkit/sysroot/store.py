"""The content store (`/bootkit/objects`): files stored once, hardlinked into deployments.

A regular file under `usr/` whose content and metadata match one already stored
becomes a hardlink to it, so a deployment that differs from the previous one in a
few files costs a few files of disk. Files outside `usr/` (the live `/etc` among
them) are copied, because they may be written to at run time and a write must never
reach another deployment.

"Metadata" is mode, owner and extended attributes, not mtime: trees rebuilt from the
same packages differ in little else, and sharing must survive a rebuild. A shared
file therefore carries the mtime of the copy that was stored first.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import secrets
import stat
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from bootkit.base.files import fsync_dir, remove_tree
from bootkit.base.seen import CREATE_FLAGS, READ_FLAGS, sha256_of
from bootkit.base.xattrs import Xattrs, read_xattrs, write_xattrs

IS_ROOT = os.geteuid() == 0
# The largest user or group id; (uid_t)-1 means "no change" to chown.
MAX_ID = (1 << 32) - 2
# Seconds either side of 1970 that every 64-bit time_t holds (filesystems clamp far sooner).
TIME_LIMIT = float(1 << 62)


@dataclass(frozen=True)
class FileMeta:
    """What a file carries besides its content; all but mtime is part of an object's key."""

    mode: int
    uid: int
    gid: int
    xattrs: Xattrs
    mtime: float

    def __post_init__(self) -> None:
        # Values an archive may declare but no filesystem can take: refused, not truncated.
        if not (0 <= self.uid <= MAX_ID and 0 <= self.gid <= MAX_ID):
            raise ValueError(f"owner {self.uid}:{self.gid} is not a valid user and group id")
        if not -TIME_LIMIT < self.mtime < TIME_LIMIT:
            raise ValueError(f"modification time {self.mtime} is out of range")


def object_key(content_hash: str, meta: FileMeta) -> str:
    """The name of the object holding this content with this metadata.

    Each extended attribute is length-prefixed: a value may hold any byte, so with
    separators alone one attribute could be made to read as two. A file without
    any has the key it always had; one with some a key that cannot be mistaken for
    an older one (`legacy_object_key`), whose encoding starts with a NUL byte there.
    """
    h = _key_start(content_hash, meta)
    if meta.xattrs:
        h.update(b"\1")
        for name, value in meta.xattrs:
            encoded = name.encode()
            h.update(len(encoded).to_bytes(8, "big") + encoded)
            h.update(len(value).to_bytes(8, "big") + value)
    return h.hexdigest()


def legacy_object_key(content_hash: str, meta: FileMeta) -> str:
    """The key older versions gave this content and metadata: objects they stored keep
    their names, so that fsck can still check them (see `key_matches`)."""
    h = _key_start(content_hash, meta)
    for name, value in meta.xattrs:
        h.update(b"\0" + name.encode() + b"=" + value)
    return h.hexdigest()


def key_matches(key: str, content_hash: str, meta: FileMeta) -> bool:
    """Whether `key` names this content with this metadata, in either encoding."""
    return key in (object_key(content_hash, meta), legacy_object_key(content_hash, meta))


def _key_start(content_hash: str, meta: FileMeta) -> hashlib._Hash:
    h = hashlib.sha256(content_hash.encode())
    h.update(f"\0{stat.S_IMODE(meta.mode):o}\0{meta.uid}\0{meta.gid}".encode())
    return h


def apply_meta(path: str | Path | int, meta: FileMeta, *, symlink: bool = False) -> None:
    """Give `path` (or an open descriptor) the owner (as root), attributes, mode (not on
    a symlink) and mtime; a path's last component is never followed."""
    fd = isinstance(path, int)
    if IS_ROOT:
        os.chown(path, meta.uid, meta.gid, follow_symlinks=fd)
    write_xattrs(path, meta.xattrs)
    if fd:
        # chmod after chown: chown clears setuid/setgid bits.
        os.chmod(path, stat.S_IMODE(meta.mode))
    elif not symlink:
        # Linux cannot chmod a symlink itself: refused rather than followed, should the
        # path have become one.
        os.chmod(path, stat.S_IMODE(meta.mode), follow_symlinks=False)
    os.utime(path, (meta.mtime, meta.mtime), follow_symlinks=fd)


def create_file(dest: str, meta: FileMeta, write: Callable[[int], object]) -> None:
    """Make `dest`, a new regular file, with what `write` writes to its descriptor and
    with `meta`, applied through that descriptor: never through a symlink or into a
    file that was there before."""
    fd = os.open(dest, CREATE_FLAGS, 0o600)
    try:
        write(fd)
        apply_meta(fd, meta)
    except BaseException:
        os.unlink(dest)  # so that the name can be filled again, or the error reported
        raise
    finally:
        os.close(fd)


def share_tree(store: ObjectStore, top: Path) -> int:
    """Store each regular file below `top` once, as `link_into` stores a tree's files under
    usr/: for the /etc defaults of a tree that shipped them in /etc (now usr/etc), which
    the importer copied because they were outside usr/ then. Symlinks are not followed.
    Returns how many files became links to objects stored before."""
    store.prepare()
    reused = 0
    for parent, _dirs, files in os.walk(top):
        for name in files:
            path = os.path.join(parent, name)
            st = os.lstat(path)
            if not stat.S_ISREG(st.st_mode) or st.st_nlink != 1:
                continue
            fd = os.open(path, READ_FLAGS)
            try:
                digest = sha256_of(fd)
            finally:
                os.close(fd)
            meta = FileMeta(st.st_mode, st.st_uid, st.st_gid, read_xattrs(path), st.st_mtime)
            reused += store.share(path, object_key(digest, meta))
    return reused


def dedup_eligible(rel: str) -> bool:
    """Whether the file at `rel` in a tree is stored once, not copied (see above)."""
    return rel.startswith("usr/")


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

    def link_existing(self, key: str, dest: str) -> bool:
        """Hardlink object `key` to `dest` if it is stored and can take one more link."""
        try:
            os.link(f"{self.root}/{key[:2]}/{key[2:]}", dest)
        except FileNotFoundError:
            return False
        except OSError as err:
            if err.errno != errno.EMLINK:
                raise
            return False
        return True

    def link_into(self, key: str, dest: str, fill: Callable[[str], None]) -> bool:
        """Hardlink object `key` to `dest`, storing it first if new: `fill` makes `dest`
        with the content and metadata the key stands for. True if reused."""
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
            return False
        # New content: the tree's own copy becomes the stored object. Until the tree is
        # synced and recorded, nothing else links to it, so after a crash the orphaned
        # tree goes and the prune that follows takes the object with it.
        fill(dest)
        subdir = obj[: obj.rindex("/")]
        if subdir not in self._subdirs:
            os.makedirs(subdir, exist_ok=True)
            self._subdirs.add(subdir)
        try:
            os.link(dest, obj)
        except FileExistsError:
            # Another thread stored the same content first: share its object instead.
            # The link is made under a name of the store's own: a name beside `dest`
            # could be one the tree holds, which another thread may be filling.
            tmp = f"{self.tmp}/link.{secrets.token_hex(16)}"
            try:
                os.link(obj, tmp)
            except OSError as err:
                if err.errno != errno.EMLINK:
                    raise
                return False  # keep the private copy
            os.rename(tmp, dest)
            return True
        return False

    def share(self, path: str, key: str) -> bool:
        """Make `path`, a file of a tree being built that only it links to, an object
        under `key` (which its content and metadata must give): replaced by a link to
        the stored object if there is one, else stored itself. True if reused."""
        obj = f"{self.root}/{key[:2]}/{key[2:]}"
        tmp = f"{self.tmp}/share.{secrets.token_hex(16)}"
        try:
            os.link(obj, tmp)
        except FileNotFoundError:
            os.makedirs(obj[: obj.rindex("/")], exist_ok=True)
            try:
                os.link(path, obj)
                return False
            except FileExistsError:
                os.link(obj, tmp)  # stored meanwhile: share it after all
        except OSError as err:
            if err.errno != errno.EMLINK:
                raise
            return False  # too many links to that object: keep the copy
        os.rename(tmp, path)
        return True

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
                remove_tree(sub)
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
