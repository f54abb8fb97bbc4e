"""The atomic-desktop layout: where a system keeps what its users and its admin make,
a deployment has a symlink into /var, so that it outlives every update and rollback.

    home -> var/home        root -> var/roothome     opt -> var/opt
    srv -> var/srv          mnt -> var/mnt           media -> run/media
    usr/local -> ../var/usrlocal

A deployment is replaced whole by the next update, but for its /etc and the /var
all deployments of the OS share, and its /usr is read-only: a file kept in a real
/home or /opt would be seen by one deployment and lost with it. Behind these
symlinks it lives in the shared /var (/media in /run: what is mounted there lasts
as long as the boot).

Once /var is handed over, a deploy gives the tree these symlinks, whatever it
ships there:
- on the first deploy of an OS (its shared /var was empty before), the content of
  those directories moves into the shared targets, one rename per entry, no symlink
  followed; a name the target has already (the tree's own /var seeded it) stays;
- on a later deploy, such content (anything but empty directories) is left out with
  one warning: the shared copies are the system's by now, not an image's to change;
- a symlink there already is replaced, with a warning if it led elsewhere (the
  exact one is kept);
- the tree gets a tmpfiles.d snippet that makes the targets at boot, and the targets
  are made in the shared /var at once, for a system without systemd-tmpfiles.

The tree's `os_digest` then covers the tree as deployed (the symlinks and the
snippet, not the content that went), so that `bootkit fsck` finds it unchanged.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import posixpath
import secrets
import shutil
import stat
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from bootkit.base.confined import Tree
from bootkit.base.files import remove_path, remove_tree
from bootkit.base.filetypes import FileType
from bootkit.base.xattrs import read_xattrs
from bootkit.sysroot.contentdigest import note_of, os_digest
from bootkit.sysroot.importers import ImportReport
from bootkit.sysroot.store import FileMeta, ObjectStore, apply_meta, create_file, object_key

log = logging.getLogger("bootkit")


@dataclass(frozen=True)
class Place:
    """A path of a tree that becomes a symlink to a directory the running system keeps."""

    path: str  # in the tree
    link: str  # what the symlink says, relative to the directory it is in
    mode: int  # of the directory it leads to

    @property
    def target(self) -> str:
        """Where the symlink leads, from the tree's root."""
        return posixpath.normpath(posixpath.join(posixpath.dirname(self.path), self.link))

    @property
    def shared(self) -> str | None:
        """The target's name in the shared /var; None for one elsewhere (/run)."""
        head, _, name = self.target.partition("/")
        return name if head == "var" else None

    def leads_to_target(self, link: str) -> bool:
        """Whether a symlink here that says `link` leads to the target, as the booted
        system would read it (`/var/home` for `var/home`, say)."""
        at = posixpath.join("/", posixpath.dirname(self.path), link)
        return posixpath.normpath(at) == f"/{self.target}"


PLACES = (
    Place("home", "var/home", 0o755),
    Place("root", "var/roothome", 0o700),
    Place("opt", "var/opt", 0o755),
    Place("srv", "var/srv", 0o755),
    Place("mnt", "var/mnt", 0o755),
    Place("media", "run/media", 0o755),
    Place("usr/local", "../var/usrlocal", 0o755),
)
TMPFILES = "usr/lib/tmpfiles.d/bootkit-layout.conf"
# Directories above the snippet, noted again once it is written (usr may be new: see etcmerge).
_SNIPPET_DIRS = ("usr", "usr/lib", "usr/lib/tmpfiles.d")
_HINT = "in a root tree, usr/lib/tmpfiles.d is a directory (or absent), never a symlink"
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


def tmpfiles_snippet() -> str:
    """tmpfiles.d(5) lines that make each symlink's target at boot."""
    lines = [f"d /{p.target} {p.mode:04o} root root -" for p in PLACES]
    links = ", ".join(f"/{p.path}" for p in PLACES)
    return f"# Made by bootkit: the directories that {links} lead to.\n" + "\n".join(lines) + "\n"


def lay_out(tree: Path, shared_var: Path, store: ObjectStore, report: ImportReport, *,
            first: bool) -> None:
    """Give the imported `tree` the layout, and `report.os_digest` the tree it leaves.

    `shared_var` is the OS's shared /var; `first`: it was empty before this deploy.
    """
    _write_tmpfiles(tree, store)  # first: a tree it refuses has had nothing moved out yet
    make_targets(shared_var)
    layout = _Layout(tree, shared_var if first else None, store)
    for place in PLACES:
        layout.clear(place)
    for place in PLACES:
        if not os.path.lexists(tree / place.path):
            os.symlink(place.link, tree / place.path)
    if layout.pruning:
        store.prune()
    layout.warn()
    written = [p.path for p in PLACES] + [*_SNIPPET_DIRS, TMPFILES]
    now = (note_of(tree, rel, _file_hash) for rel in written)
    replaced = [p.path for p in PLACES] + [TMPFILES]
    report.os_digest = os_digest(report.notes, replaced, [n for n in now if n is not None])


def make_targets(shared_var: Path) -> None:
    """The symlinks' targets in the shared /var, made where missing; what is there is
    the system's and stays as it is."""
    for place in PLACES:
        if place.shared is not None and not os.path.lexists(shared_var / place.shared):
            os.mkdir(shared_var / place.shared, place.mode)
            os.chmod(shared_var / place.shared, place.mode)  # not narrowed by the umask


@dataclass
class _Layout:
    """Clears the places of a tree, moving their content into `shared_var` if given."""

    tree: Path
    shared_var: Path | None
    store: ObjectStore
    left_out: dict[str, str] = field(default_factory=dict)  # place -> what stayed out
    redirected: dict[str, str] = field(default_factory=dict)  # place -> its former symlink
    pruning: bool = False  # stored objects may have lost their last link

    def clear(self, place: Place) -> None:
        """Make `place` free for its symlink; the exact symlink stays."""
        path = self.tree / place.path
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            return
        if stat.S_ISLNK(st.st_mode):
            link = os.readlink(path)
            if link == place.link:
                return
            if not place.leads_to_target(link):
                self.redirected[place.path] = link
            os.unlink(path)
        elif stat.S_ISDIR(st.st_mode):
            linked = _linked_files(path)
            if linked and not self.pruning:
                # Stored objects lose links now; marked first, so that a crash before
                # the prune leaves it to the next command.
                self.store.mark_prune_pending()
                self.pruning = True
            moving = self.shared_var is not None and place.shared is not None
            left = self.move_content(place, path, linked) if moving else _content(path)
            if left:
                self.left_out[place.path] = f"{left} {'entry' if left == 1 else 'entries'}"
            remove_tree(path)
        else:
            self.left_out[place.path] = f"a {FileType.of_mode(st.st_mode).description}"
            os.unlink(path)

    def move_content(self, place: Place, src: Path, linked: list[Path]) -> int:
        """Move the entries of `src` into the place's shared target, without following a
        symlink on either side; how many entries (as `_content` counts) stayed out.

        The files of `linked` get an inode of their own first: under usr/ each is a
        stored object, shared by every deployment, which a write in /var must never
        reach. (A hardlink between two moved files becomes two files.)
        """
        assert self.shared_var is not None and place.shared is not None
        dest = self.shared_var / place.shared
        if not stat.S_ISDIR(os.lstat(dest).st_mode):
            return _content(src)  # a symlink the tree's /var seeded there is never followed
        for path in linked:
            _make_private(path)
        left = 0
        with _dir_fd(src) as src_fd, _dir_fd(dest) as dest_fd:
            for name in sorted(os.listdir(src_fd)):
                # The lock keeps others out, and the shared /var was empty before this
                # deploy: only the tree's own /var can have put this name there.
                if _exists(name, dest_fd):
                    left += _content(src / name)
                else:
                    os.rename(name, name, src_dir_fd=src_fd, dst_dir_fd=dest_fd)
        return left

    def warn(self) -> None:
        if self.left_out:
            listed = ", ".join(f"/{p} ({what})" for p, what in self.left_out.items())
            log.warning(
                "the tree's content in %s is left out: those are symlinks into the /var all "
                "deployments share (/media into /run), and only the first deployment of an "
                "OS moves content there, never over what is there already; ship such files "
                "in /usr, or add them to /var in the running system", listed,
            )
        if self.redirected:
            listed = ", ".join(f"/{p} -> {link}" for p, link in self.redirected.items())
            log.warning("replaced symlinks of the tree that led elsewhere: %s; they lead into "
                        "/var now, as in every deployment", listed)


@contextlib.contextmanager
def _dir_fd(path: Path) -> Iterator[int]:
    fd = os.open(path, _DIR_FLAGS)
    try:
        yield fd
    finally:
        os.close(fd)


def _exists(name: str, dir_fd: int) -> bool:
    try:
        os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        return False
    return True


def _content(path: Path) -> int:
    """How many entries below directory `path` are not directories (symlinks to one
    included), never following a symlink; 1 if `path` is no directory."""
    if path.is_symlink() or not path.is_dir():
        return 1
    count = 0
    for parent, dirs, files in os.walk(path):
        count += len(files) + sum(os.path.islink(os.path.join(parent, d)) for d in dirs)
    return count


def _linked_files(top: Path) -> list[Path]:
    """The regular files below directory `top` that have another name, as a stored
    object does; symlinks are not followed."""
    linked = []
    for parent, _dirs, files in os.walk(top):
        for name in files:
            st = os.lstat(os.path.join(parent, name))
            if stat.S_ISREG(st.st_mode) and st.st_nlink > 1:
                linked.append(Path(parent, name))
    return linked


def _make_private(path: Path) -> None:
    """Replace the regular file `path` by a copy with the same content and metadata; its
    directory keeps its mtime, which the copy's temporary name would otherwise change."""
    st = os.lstat(path)
    parent = os.lstat(path.parent)
    meta = FileMeta(st.st_mode, st.st_uid, st.st_gid, read_xattrs(path), st.st_mtime)
    # A fresh name, made exclusively: a symlink the tree has at a guessable one is no way out.
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.bootkit-tmp")
    made = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    with (open(os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC), "rb") as src,
          open(os.open(tmp, made, 0o600), "wb") as out):
        shutil.copyfileobj(src, out, 1 << 20)
    apply_meta(tmp, meta)
    os.rename(tmp, path)
    os.utime(path.parent, ns=(parent.st_atime_ns, parent.st_mtime_ns), follow_symlinks=False)


def _write_tmpfiles(tree: Path, store: ObjectStore) -> None:
    """The snippet at TMPFILES, stored once like every file under usr/; a file the tree
    has there is replaced, as the snippet must match the layout bootkit made."""
    confined = Tree(tree)
    for rel in _SNIPPET_DIRS:
        if not confined.real_dir(rel, _HINT):
            os.mkdir(tree / rel, 0o755)
            os.chmod(tree / rel, 0o755)
    dest = tree / TMPFILES
    if os.path.lexists(dest):
        remove_path(dest)
    data = tmpfiles_snippet().encode()
    meta = FileMeta(stat.S_IFREG | 0o644, os.geteuid(), os.getegid(), (), time.time())

    def fill(path: str) -> None:
        create_file(path, meta, lambda fd: os.write(fd, data))

    store.link_into(object_key(hashlib.sha256(data).hexdigest(), meta), str(dest), fill)


def _file_hash(path: str, st: os.stat_result) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()
