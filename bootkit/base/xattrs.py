"""Extended attributes of one filesystem object (symlinks not followed), read and written
with one policy each.

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

_UNSUPPORTED = frozenset({errno.ENOTSUP, errno.EOPNOTSUPP})


def read_xattrs(path: StrPath) -> Xattrs:
    """The extended attributes of `path` itself, sorted by name."""
    try:
        names = os.listxattr(path, follow_symlinks=False)
    except OSError as err:
        if err.errno in _UNSUPPORTED:
            return ()
        raise
    found = []
    for name in sorted(names):
        try:
            found.append((name, os.getxattr(path, name, follow_symlinks=False)))
        except OSError as err:
            # ENODATA: removed since it was listed.
            if err.errno != errno.ENODATA and err.errno not in _UNSUPPORTED:
                raise
    return tuple(found)


def write_xattrs(path: StrPath, xattrs: Xattrs) -> None:
    """Set each of `xattrs` on `path` itself, leaving out what the destination refuses."""
    for name, value in xattrs:
        try:
            os.setxattr(path, name, value, follow_symlinks=False)
        except OSError as err:
            if err.errno in _UNSUPPORTED:
                continue
            if err.errno == errno.EPERM and name.startswith("user.") and _is_symlink(path):
                continue
            raise


def _is_symlink(path: StrPath) -> bool:
    return stat.S_ISLNK(os.lstat(path).st_mode)
