"""Importing a tar archive (plain, gzip, xz, bzip2 or zstd), read once from start to end."""

from __future__ import annotations

import gzip
import lzma
import os
import tarfile
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, NamedTuple

from bootkit.base import process
from bootkit.base.filetypes import FileType
from bootkit.errors import BootkitError
from bootkit.sysroot.importers.tarheaders import BoundedTarInfo
from bootkit.sysroot.importers.tarmembers import (
    IMPLICIT_DIR_MODE as IMPLICIT_DIR_MODE,
)
from bootkit.sysroot.importers.tarmembers import (
    MEMBER_TYPES,
    ZSTD_MAGIC,
    Reader,
    escapes,
    format_bits,
    implicit_dir,
    member_content,
    member_digest,
    member_rel,
    pax_xattrs,
)
from bootkit.sysroot.importers.tree import (
    IMPORT_ERRORS,
    ImportReport,
    Progress,
    TreeBuilder,
    import_error,
)
from bootkit.sysroot.store import FileMeta, ObjectStore, create_file


class _CountingReader:
    def __init__(self, f: IO[bytes], progress: Progress) -> None:
        self.f = f
        self.progress = progress

    def read(self, n: int = -1) -> bytes:
        data = self.f.read(n)
        self.progress(len(data))
        return data


def _compressed(magic: bytes) -> bool:
    """Whether an archive starting with `magic` (10 bytes) is compressed: what tarfile's
    stream mode ("r|*") takes for gzip, bzip2 or xz, or zstd, which the zstd program reads."""
    return magic.startswith((b"\x1f\x8b\x08", b"\x5d\x00\x00\x80", b"\xfd7zXZ", ZSTD_MAGIC)) or (
        magic[0:3] == b"BZh" and magic[4:10] == b"1AY&SY"
    )


# Reads of a plain archive: many members' headers and contents per system call.
_READ_BUFFER = 1 << 20


class _PlainArchive:
    """A plain archive's file, read in place, whose position is kept here: tarfile asks
    for it three times a member, and a buffered file asks the kernel each time."""

    def __init__(self, f: IO[bytes]) -> None:
        self.f = f
        self.pos = f.tell()

    def read(self, n: int = -1) -> bytes:
        data = self.f.read(n)
        self.pos += len(data)
        return data

    def seek(self, pos: int, whence: int = os.SEEK_SET) -> int:
        self.pos = self.f.seek(pos, whence)
        return self.pos

    def tell(self) -> int:
        return self.pos


class _Content:
    """The content of a member that is not sparse, read straight from the archive: a
    member's reader from tarfile is three objects, each with its own calls per read.
    As with tarfile's, an archive that ends before the content is refused."""

    def __init__(self, archive: _PlainArchive, m: tarfile.TarInfo) -> None:
        self.archive = archive
        self.offset = m.offset_data
        self.left = m.size

    def read(self, n: int = -1) -> bytes:
        n = self.left if n < 0 else min(n, self.left)
        if n == 0:
            return b""
        self.archive.seek(self.offset)
        data = self.archive.read(n)
        if len(data) != n:
            raise tarfile.ReadError("unexpected end of data")
        self.offset += n
        self.left -= n
        return data


def _members_in_place(
    tf: tarfile.TarFile, size: int, progress: Progress
) -> Iterator[tarfile.TarInfo]:
    """The members of an archive of `size` bytes read in place, each counted once read
    (`tf.offset` is where the next header starts); what follows the last, at the end."""
    counted = 0
    for member in tf:
        yield member
        progress(tf.offset - counted)
        counted = tf.offset
    progress(max(0, size - counted))


class _Opened(NamedTuple):
    tf: tarfile.TarFile
    members: Iterator[tarfile.TarInfo]  # each to be read before the next is asked for
    archive: _PlainArchive | None  # when read in place: an earlier member can be read again

    def content(self, m: tarfile.TarInfo) -> Reader:
        """What a regular file member holds."""
        if self.archive is not None and not m.issparse():
            return _Content(self.archive, m)
        f = self.tf.extractfile(m)
        assert f is not None
        return f


@contextmanager
def _open_tar(src: Path, progress: Progress) -> Iterator[_Opened]:
    """Archive `src` and its members.

    A plain archive is read in place: headers and contents come straight from one
    buffered file, not through tarfile's stream, which copies its buffer for every
    header in Python. A compressed one can only be read as a stream."""
    with open(src, "rb", buffering=_READ_BUFFER) as raw:
        magic = raw.read(10)
        raw.seek(0)
        if not _compressed(magic):
            plain = _PlainArchive(raw)
            with tarfile.open(fileobj=plain, mode="r:",  # type: ignore[call-overload]
                              tarinfo=BoundedTarInfo) as tf:
                size = os.fstat(raw.fileno()).st_size
                yield _Opened(tf, _members_in_place(tf, size, progress), plain)
            return
        counted = _CountingReader(raw, progress)
        if not magic.startswith(ZSTD_MAGIC):
            with tarfile.open(fileobj=counted, mode="r|*",  # type: ignore[call-overload]
                              tarinfo=BoundedTarInfo) as tf:
                yield _Opened(tf, iter(tf), None)
            return
        # Python's tarfile cannot read zstd; the zstd program decompresses it on the way.
        with process.filtered(
            ["zstd", "-dcq"], f"decompressing {src}", counted,
            hint="the archive may be truncated or corrupt",
        ) as out, tarfile.open(fileobj=out, mode="r|", tarinfo=BoundedTarInfo) as tf:
            yield _Opened(tf, iter(tf), None)


class TarSource:
    """A tar archive of a root tree (plain, gzip, xz, bzip2 or zstd), read once in order.

    Every member is checked before it is written: no absolute paths, no '..', no
    symlink that leads out of the tree or is written through, no hardlink to
    anything but an earlier file, no path twice. Device nodes and fifos are skipped.
    A directory the archive holds members of but does not list is made 0755, owned
    by root (see IMPLICIT_DIR_MODE).
    """

    def __init__(self, archive: Path) -> None:
        self.archive = archive
        self.label = archive.name
        self.origin = str(archive.resolve())

    def size(self) -> int:
        """The archive's bytes as stored, which is what the stream counts."""
        return self.archive.stat().st_size

    def import_into(
        self, dest: Path, store: ObjectStore, progress: Progress, dropped: frozenset[str]
    ) -> ImportReport:
        """Import into `dest` (created). The archive is read whole, `dropped` names
        included; what /var holds is only checked when "var" is dropped (see _TarImport)."""
        dest.mkdir()
        return _TarImport(self.archive, dest, store, progress, "var" in dropped).run()

    def imported(self) -> None:
        """Nothing to keep: an archive is read whole every time."""


# What an archive's member can be made into; a hardlink names another member instead.
_IMPORTED = (FileType.DIR, FileType.SYMLINK, FileType.FILE)


def _copy_to(f: Reader, fd: int) -> None:
    while block := f.read(1 << 20):
        view = memoryview(block)
        while view:
            view = view[os.write(fd, view) :]


class _TarImport:
    """One pass over an archive's members into a new tree.

    What the tree holds so far is known here, not asked of the filesystem: the tree
    is new and only this import writes to it. Every entry is still made with an
    exclusive create that follows no symlink (mkdir, symlink, link, O_EXCL|O_NOFOLLOW),
    so a path taken twice could not go unnoticed even then.

    With `drop_var`, what is below var/ (which the deploy then discards) is checked
    and its files hashed, as for any member, but not written, when the archive is
    read in place: a file outside /var that links to one of /var is then copied from
    the archive. /var has no part in the tree's notes but for such a link, whose note
    is the file's own, so the notes are the same either way.
    """

    def __init__(
        self, archive: Path, dest: Path, store: ObjectStore, progress: Progress, drop_var: bool
    ) -> None:
        self.archive = archive
        self.dest = dest
        self.tree = TreeBuilder(dest, store, progress)
        self.drop_var = drop_var
        # The names under var/ of files not written, for a link from outside /var to
        # read again from the member that holds the content.
        self.unwritten: set[str] = set()
        # Every path of the tree so far: True for a directory.
        self.taken: dict[str, bool] = {".": True}
        # Regular files so far, for hardlinks to name: their metadata and size, and
        # the member that holds their content.
        self.seen_files: dict[str, tuple[FileMeta, int, tarfile.TarInfo]] = {}
        self.spool = os.path.join(store.tmp, f"member.{os.getpid()}")

    def run(self) -> ImportReport:
        # The root, until a member names it (see IMPLICIT_DIR_MODE). An archive's root
        # has never been part of its notes, so that ids stay what they were.
        self.tree.add_dir(".", implicit_dir(self.archive.stat().st_mtime), noted=False)
        try:
            with _open_tar(self.archive, self.tree.progress) as opened:
                self.drop_var = self.drop_var and opened.archive is not None
                for member in opened.members:
                    self.add_checked(member, opened)
        except (tarfile.TarError, EOFError, zlib.error, lzma.LZMAError, gzip.BadGzipFile) as err:
            raise BootkitError(
                f"{self.archive} is not a readable tar archive: {err}",
                hint="check the file; it may be truncated or corrupt",
            ) from None
        return self.tree.finish()

    def add_checked(self, m: tarfile.TarInfo, opened: _Opened) -> None:
        """Add one member; what the filesystem refuses about it is refused by name."""
        try:
            self.add(m, opened)
        except gzip.BadGzipFile:
            raise  # the archive's fault, not this member's
        except IMPORT_ERRORS as err:
            raise import_error(f"tar member {m.name!r}", err) from None

    def add(self, m: tarfile.TarInfo, opened: _Opened) -> None:
        rel = member_rel(m.name)
        kind = MEMBER_TYPES.get(m.type)  # None: a hardlink, or a type unknown to tar
        meta = FileMeta(m.mode | format_bits(kind), m.uid, m.gid, pax_xattrs(m), float(m.mtime))
        if rel == ".":
            if kind is FileType.DIR:
                self.tree.add_dir(".", meta)
            return
        self.check_parents(rel, m)
        self.check_new(rel, kind is FileType.DIR, m)
        if not (kind in _IMPORTED or m.islnk()):
            # Nothing is made of it, so its path is free for a later member.
            self.tree.skip(rel, kind.description if kind else "special file")
            return
        if self.drop_var and rel.startswith("var/"):
            self.check_unwritten(rel, kind, m, meta, opened)
        elif kind is FileType.DIR:
            self.tree.add_dir(rel, meta)
        elif kind is FileType.SYMLINK:
            self.add_symlink(rel, m, meta)
        elif m.islnk():
            self.add_hardlink(rel, m, opened)
        else:
            self.add_file(rel, m, meta, opened)
        self.taken[rel] = kind is FileType.DIR

    def check_parents(self, rel: str, m: tarfile.TarInfo) -> None:
        """Refuse a member whose parent directories are symlinks or files; make those that
        are missing, as implicit directories (see IMPLICIT_DIR_MODE)."""
        parent = rel.rpartition("/")[0]
        if not parent or self.taken.get(parent):
            return  # a directory stays one: no later member may take its path (check_new)
        done = ""
        for part in parent.split("/"):
            done = f"{done}/{part}" if done else part
            is_dir = self.taken.get(done)
            if is_dir is None:
                if not (self.drop_var and done.startswith("var/")):
                    self.tree.add_dir(done, implicit_dir(m.mtime))
                self.taken[done] = True
            elif not is_dir:
                raise BootkitError(
                    f"tar member {m.name!r} would be written through {done}, "
                    "which is not a directory",
                    hint="the archive may be malicious; rebuild it",
                )

    def check_new(self, rel: str, is_dir: bool, m: tarfile.TarInfo) -> None:
        """Refuse a member whose path an earlier member already took (a directory may repeat)."""
        taken = self.taken.get(rel)
        if taken is not None and not (is_dir and taken):
            raise BootkitError(
                f"tar member {m.name!r} appears more than once in the archive",
                hint="rebuild the archive with each path once",
            )

    def check_symlink(self, rel: str, m: tarfile.TarInfo) -> None:
        if escapes(rel, m.linkname):
            raise BootkitError(
                f"tar member {m.name!r} is a symlink that escapes the tree ({m.linkname!r})",
                hint="the archive may be malicious; rebuild it",
            )

    def add_symlink(self, rel: str, m: tarfile.TarInfo, meta: FileMeta) -> None:
        self.check_symlink(rel, m)
        self.tree.add_symlink(rel, m.linkname, meta)

    def link_target(self, rel: str, m: tarfile.TarInfo) -> str:
        """The earlier file a hardlink member names, which `rel` now is too."""
        target = member_rel(m.linkname)
        if target not in self.seen_files:
            raise BootkitError(
                f"tar member {m.name!r} is a hardlink to {m.linkname!r}, which is not an earlier file in the archive",
                hint="the archive may be malicious or truncated",
            )
        self.seen_files[rel] = self.seen_files[target]
        return target

    def add_hardlink(self, rel: str, m: tarfile.TarInfo, opened: _Opened) -> None:
        target = self.link_target(rel, m)
        meta, size, holder = self.seen_files[target]
        if target not in self.unwritten:
            self.tree.add_hardlink(rel, target, meta, size)
            return
        # A copy, as of any file of /var linked from elsewhere (see same_area).
        self.tree.space.claim(rel, size)
        f = opened.content(holder)
        create_file(f"{self.dest}/{rel}", meta, lambda fd: _copy_to(f, fd))
        self.tree.note_hardlink(rel, target)

    def check_unwritten(
        self, rel: str, kind: FileType | None, m: tarfile.TarInfo, meta: FileMeta,
        opened: _Opened,
    ) -> None:
        """A member below var/, checked as any other, its file hashed, nothing written."""
        if kind is FileType.SYMLINK:
            self.check_symlink(rel, m)
        elif m.islnk():
            self.tree.note_hardlink(rel, self.link_target(rel, m))
            self.unwritten.add(rel)
        elif kind is FileType.FILE:
            # As when it is written: a sparse member may declare far more than it holds.
            self.tree.space.claim(f"tar member {m.name!r}", m.size)
            f = opened.content(m)
            self.tree.count_file(rel, meta, member_digest(f), m.size, False)
            self.seen_files[rel] = (meta, m.size, m)
            self.unwritten.add(rel)

    def add_file(self, rel: str, m: tarfile.TarInfo, meta: FileMeta, opened: _Opened) -> None:
        # Checked before a byte is written: a sparse member may declare far more than it holds.
        self.tree.space.claim(f"tar member {m.name!r}", m.size)
        f = opened.content(m)
        with member_content(f, m.size, meta, self.spool) as (digest, fill):
            self.tree.add_file(rel, meta, digest, fill, m.size)
        self.seen_files[rel] = (meta, m.size, m)
