"""Root trees for the importer's tests: one with everything to carry over, and how to compare."""

from __future__ import annotations

import errno
import hashlib
import os
import stat
from pathlib import Path

from bootkit.sysroot.importers import ImportReport, open_source
from bootkit.sysroot.store import ObjectStore
from support.helpers import make_tree, ok

IS_ROOT = os.geteuid() == 0


def describe_tree(root: Path) -> dict[str, tuple[object, ...]]:
    """Every path's type, permission bits, owner, user xattrs, mtime and content or target."""
    out: dict[str, tuple[object, ...]] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in [".", *dirnames, *filenames] if dirpath == str(root) else dirnames + filenames:
            path = Path(dirpath, name)
            st = path.lstat()
            try:
                names = os.listxattr(path, follow_symlinks=False)
            except OSError:
                names = []
            xattrs = tuple(
                sorted(
                    (n, os.getxattr(path, n, follow_symlinks=False))
                    for n in names
                    if n.startswith("user.")
                )
            )
            if stat.S_ISLNK(st.st_mode):
                what: object = os.readlink(path)
            elif stat.S_ISREG(st.st_mode):
                what = hashlib.sha256(path.read_bytes()).hexdigest()
            else:
                what = None
            rel = os.path.normpath(path.relative_to(root))
            # Files under usr/ with equal content and metadata share one inode, and so
            # the mtime of whichever came first: mtime is not part of what is shared.
            shared = stat.S_ISREG(st.st_mode) and rel.startswith("usr/")
            out[rel] = (
                stat.S_IFMT(st.st_mode),
                stat.S_IMODE(st.st_mode),
                st.st_uid,
                st.st_gid,
                xattrs,
                None if shared else int(st.st_mtime),
                what,
            )
    return out


def user_xattrs_supported(path: Path) -> bool:
    probe = path / ".xattr-probe"
    probe.write_bytes(b"")
    try:
        os.setxattr(probe, "user.probe", b"1")
    except OSError as err:
        if err.errno in (errno.ENOTSUP, errno.EOPNOTSUPP, errno.EPERM):
            return False
        raise
    finally:
        probe.unlink()
    return True


def rich_tree(root: Path) -> Path:
    """A tree with everything the importer must carry over faithfully."""
    # Files over 1 MiB take another path through a tar import than smaller ones.
    make_tree(root, files={"usr/share/big": os.urandom(256 << 10), "etc/motd": "hi\n",
                           "usr/share/huge": os.urandom(3 << 19), "etc/huge": os.urandom(3 << 19)})
    (root / "usr/bin/su").write_bytes(b"\x7fELF setuid")
    (root / "usr/bin/su").chmod(0o4755)
    (root / "usr/bin/wall").write_bytes(b"\x7fELF setgid")
    (root / "usr/bin/wall").chmod(0o2711)
    (root / "usr/share/secret").write_text("s3cret\n")
    (root / "usr/share/secret").chmod(0o600)
    (root / "usr/share/empty").write_bytes(b"")
    (root / "usr/share/same-as-big").write_bytes((root / "usr/share/big").read_bytes())
    os.link(root / "usr/bin/hello", root / "usr/bin/hello-again")
    ro = root / "usr/lib/ro"
    ro.mkdir()
    (ro / "inside").write_text("x\n")
    ro.chmod(0o555)
    (root / "usr/tmp").mkdir()
    (root / "usr/tmp").chmod(0o1777)
    (root / "usr/lib/secret-link").symlink_to("../share/secret")
    (root / "usr/bin/abs-link").symlink_to("/usr/bin/su")
    (root / "usr/lib/dangling").symlink_to("nowhere")
    if IS_ROOT:
        os.chown(root / "usr/share/secret", 1234, 5678)
        os.chown(root / "usr/bin/wall", 0, 5)
        os.chown(root / "usr/bin/wall", 0, 5)
        (root / "usr/bin/wall").chmod(0o2711)  # chown cleared it
        os.chown(root / "usr/lib/secret-link", 42, 43, follow_symlinks=False)
        os.chown(ro, 7, 8)
    if user_xattrs_supported(root):
        os.setxattr(root / "usr/bin/hello", "user.comment", b"greeter")
        os.setxattr(root / "usr/lib", "user.dir-note", b"\x00binary\xff")
    os.utime(root / "usr/share/secret", (1_000_000_000, 1_000_000_000))
    return root


def import_tree(src: Path, dest: Path, store: ObjectStore) -> ImportReport:
    return open_source(src).import_into(dest, store, lambda n: None, frozenset())


def deployed_sysroot(tmp_path: Path) -> Path:
    """A sysroot with one deployment, whose state every refused import must leave alone."""
    sysroot = tmp_path / "sys"
    sysroot.mkdir()
    ok("init", "--sysroot", sysroot, "--os", "test", "--bootloader", "grub")
    ok("deploy", "--sysroot", sysroot, make_tree(tmp_path / "tree"))
    return sysroot
