"""The one OCI image layout bootkit keeps (/bootkit/oci): skopeo writes it, bootkit
reads and prunes it.

Its content came from registries, so nothing in it is followed or trusted: blobs
are opened without following symlinks, bounded and checked against their digest,
and index.json is bounded and checked before it is used. A layer blob that has
been imported is replaced by an empty file of the same name (see empty_blob).
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import re
import stat
from pathlib import Path
from typing import Any

from bootkit.base.files import atomic_write, fsync_dir, remove_file, remove_tree
from bootkit.errors import BootkitError
from bootkit.oci.manifest import MAX_JSON, check_digest, digest_of, load_json

log = logging.getLogger("bootkit")

REF_NAME = "org.opencontainers.image.ref.name"
_MAX_ENTRIES = 10000
_HEX = re.compile(r"[0-9a-f]{64}")
# Where skopeo writes a blob before renaming it into blobs/sha256.
_SKOPEO_TEMP = "oci-put-blob"
_EMPTY_INDEX = '{"schemaVersion": 2, "manifests": []}\n'
_DAMAGED = "the image layout was changed or damaged; remove the file and fetch the image again"


class ImageLayout:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.blobs = root / "blobs" / "sha256"
        self.layers_dir = root / "layers"
        self.index_path = root / "index.json"

    def prepare(self) -> None:
        """Make the layout's files and directories that are missing.

        The layout is root's alone, like the content store: an image's blobs hold its
        /etc, whose files may be readable only by their owners once deployed."""
        self.root.parent.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(FileExistsError):
            self.root.mkdir(mode=0o700)
        for directory in (self.root, self.root / "blobs", self.blobs, self.layers_dir):
            _make_dir(directory)
        if not os.path.lexists(self.root / "oci-layout"):
            atomic_write(self.root / "oci-layout", '{"imageLayoutVersion": "1.0.0"}\n')
        if not os.path.lexists(self.index_path):
            atomic_write(self.index_path, _EMPTY_INDEX)
            return
        try:
            self._index()
        except BootkitError as err:
            # skopeo rewrites index.json in place, so a crash during a copy can leave it
            # cut short. It only names what bootkit fetched (each deployment records its
            # digests, and cleanup keeps blobs by them), so an empty one loses nothing.
            log.warning("%s; starting it afresh", err.message)
            atomic_write(self.index_path, _EMPTY_INDEX)

    def blob_path(self, digest: str) -> Path:
        return self.blobs / check_digest(digest, "blob digest").removeprefix("sha256:")

    def has_blob(self, digest: str) -> bool:
        """Whether the blob is here with its content (not emptied after its import)."""
        try:
            st = os.lstat(self.blob_path(digest))
        except FileNotFoundError:
            return False
        return stat.S_ISREG(st.st_mode) and st.st_size > 0

    def read_blob(self, digest: str, limit: int = MAX_JSON) -> bytes:
        """The blob's bytes, at most `limit` of them, checked against `digest`."""
        path = self.blob_path(digest)
        try:
            data = _read_bounded(path, limit, f"blob {digest} of the image layout {self.root}")
        except FileNotFoundError:
            raise BootkitError(f"blob {digest} is not in the image layout {self.root}",
                               hint="fetch the image again") from None
        if digest_of(data) != digest:
            problem = "was emptied after its import" if not data else "does not match its digest"
            raise BootkitError(f"blob {digest} in {self.root} {problem}", hint=_DAMAGED)
        return data

    def manifest_named(self, ref_name: str) -> str | None:
        """The digest of the manifest index.json lists under `ref_name`, if any."""
        found = [e["digest"] for e in self._entries() if _name_of(e) == ref_name]
        if len(found) > 1:
            raise BootkitError(f"{self.index_path} lists {ref_name!r} {len(found)} times",
                               hint=_DAMAGED)
        return found[0] if found else None

    def empty_blob(self, digest: str) -> None:
        """Replace an imported layer's blob by an empty file: skopeo then takes the
        layer as present and does not fetch it again, and the disk space is freed."""
        atomic_write(self.blob_path(digest), b"")

    def forget_emptied(self, digest: str) -> None:
        """Remove an emptied blob (or anything but a real one), so skopeo fetches it again."""
        path = self.blob_path(digest)
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            return
        if not stat.S_ISREG(st.st_mode) or st.st_size == 0:
            _remove_entry(path, st)
            fsync_dir(self.blobs)

    def remove_unused(self, keep_blobs: set[str], keep_names: set[str]) -> int:
        """Drop the index.json entries not named in `keep_names` and every blob not in
        `keep_blobs` (the manifests of the entries kept stay too); the bytes freed.

        Anything in blobs/sha256 that is not a regular file with a digest for a name
        is removed as well (a symlink itself, never what it points to), and so are
        the temp files of a skopeo copy that was interrupted.
        """
        doc = self._index()
        entries = doc["manifests"]
        kept = [e for e in entries if _name_of(e) in keep_names]
        if len(kept) != len(entries):
            # index.json first: a crash then leaves blobs nothing names, never a name
            # whose manifest is gone.
            atomic_write(self.index_path, json.dumps({**doc, "manifests": kept}, indent=1) + "\n")
        keep = set(keep_blobs) | {e["digest"] for e in kept}
        freed = 0
        for name, st in _entries(self.blobs):
            if _HEX.fullmatch(name) and stat.S_ISREG(st.st_mode) and f"sha256:{name}" in keep:
                continue
            freed += _remove_entry(self.blobs / name, st)
        for name, st in _entries(self.root):
            if name.startswith(_SKOPEO_TEMP) and stat.S_ISREG(st.st_mode):
                freed += _remove_entry(self.root / name, st)
        if self.blobs.is_dir():
            fsync_dir(self.blobs)
        return freed

    def _entries(self) -> list[dict[str, Any]]:
        return self._index()["manifests"]  # type: ignore[no-any-return]

    def _index(self) -> dict[str, Any]:
        """index.json, checked; a layout skopeo has not written yet lists nothing."""
        what = f"the image layout's index {self.index_path}"
        try:
            raw = _read_bounded(self.index_path, MAX_JSON, what)
        except FileNotFoundError:
            return {"schemaVersion": 2, "manifests": []}
        doc = load_json(raw, what)
        if not isinstance(doc, dict):
            raise BootkitError(f"{what} is not a JSON object", hint=_DAMAGED)
        manifests = doc.get("manifests")
        if not isinstance(manifests, list) or len(manifests) > _MAX_ENTRIES:
            raise BootkitError(f"{what} has no list of manifests", hint=_DAMAGED)
        for i, entry in enumerate(manifests):
            if not isinstance(entry, dict):
                raise BootkitError(f"{what}: manifests[{i}] is not an object", hint=_DAMAGED)
            check_digest(entry.get("digest"), f"{what}: manifests[{i}].digest")
            annotations = entry.get("annotations", {})
            if not isinstance(annotations, dict) or not all(
                    isinstance(v, str) for v in annotations.values()):
                raise BootkitError(f"{what}: manifests[{i}].annotations are not strings",
                                   hint=_DAMAGED)
        return doc


def _name_of(entry: dict[str, Any]) -> str | None:
    name = entry.get("annotations", {}).get(REF_NAME)
    return name if isinstance(name, str) else None


def _make_dir(path: Path) -> None:
    try:
        path.mkdir()
    except FileExistsError:
        if not stat.S_ISDIR(os.lstat(path).st_mode):
            raise BootkitError(f"{path} is not a directory", hint=_DAMAGED) from None


def _read_bounded(path: Path, limit: int, what: str) -> bytes:
    """At most `limit` bytes of the regular file `path`, never through a symlink.
    FileNotFoundError goes on, for the caller to judge."""
    try:
        # O_NONBLOCK: a fifo put in the file's place must not hang the open.
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as err:
        if err.errno != errno.ELOOP:
            raise
        raise BootkitError(f"{what} is a symlink", hint=_DAMAGED) from None
    with open(fd, "rb") as f:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise BootkitError(f"{what} is not a regular file", hint=_DAMAGED)
        if st.st_size > limit:
            raise BootkitError(f"{what} is larger than {limit} bytes", hint=_DAMAGED)
        data = f.read(limit + 1)
    if len(data) > limit:
        raise BootkitError(f"{what} is larger than {limit} bytes", hint=_DAMAGED)
    return data


def _entries(directory: Path) -> list[tuple[str, os.stat_result]]:
    try:
        with os.scandir(directory) as it:
            return [(e.name, e.stat(follow_symlinks=False)) for e in it]
    except FileNotFoundError:
        return []


def _remove_entry(path: Path, st: os.stat_result) -> int:
    """Remove `path` (whatever it is, a symlink itself); the bytes of a file freed."""
    if stat.S_ISDIR(st.st_mode):
        remove_tree(path)
        return 0
    remove_file(path)
    return st.st_size if stat.S_ISREG(st.st_mode) else 0
