"""Extended attributes of one filesystem object (symlinks not followed), read and written
with one policy each. The object is named by a path or given as an open descriptor (which
is what a file that someone else may swap must be read through).

Reading: a filesystem without xattr support has none; an attribute removed between
listing and reading is left out; any other error (no permission, a missing path)
propagates. Writing: an attribute whose namespace the destination does not support
is left out (security.* on a filesystem without a security module, say), and so is a
user.* attribute on a symlink, which Linux refuses; any other error propagates.
"""

from __future__ import annotations

import errno
import os
import stat

Xattrs = tuple[tuple[str, bytes], ...]  # (name, value) pairs, sorted by name

StrPath = str | os.PathLike[str]
# A path (its last component never followed) or an open descriptor.
Target = StrPath | int

_UNSUPPORTED = frozenset({errno.ENOTSUP, errno.EOPNOTSUPP})


def _follow(target: Target) -> bool:
    # A path's last component is never followed. A descriptor is the object itself,
    # and Python refuses follow_symlinks=False with one.
    return isinstance(target, int)


def read_xattrs(path: Target) -> Xattrs:
    """The extended attributes of `path` itself, sorted by name."""
    try:
        names = os.listxattr(path, follow_symlinks=_follow(path))
    except OSError as err:
        if err.errno in _UNSUPPORTED:
            return ()
        raise
    found = []
    for name in sorted(names):
        try:
            found.append((name, os.getxattr(path, name, follow_symlinks=_follow(path))))
        except OSError as err:
            # ENODATA: removed since it was listed.
            if err.errno != errno.ENODATA and err.errno not in _UNSUPPORTED:
                raise
    return tuple(found)


def write_xattrs(path: Target, xattrs: Xattrs) -> None:
    """Set each of `xattrs` on `path` itself, leaving out what the destination refuses."""
    for name, value in xattrs:
        try:
            os.setxattr(path, name, value, follow_symlinks=_follow(path))
        except OSError as err:
            if err.errno in _UNSUPPORTED:
                continue
            if err.errno == errno.EPERM and name.startswith("user.") and _is_symlink(path):
                continue
            raise


def _is_symlink(path: Target) -> bool:
    st = os.fstat(path) if isinstance(path, int) else os.lstat(path)
    return stat.S_ISLNK(st.st_mode)
