"""The tree bootkit builds from an image, compared with the one umoci, an independent
implementation of the OCI layer rules, unpacks from the same image."""

from __future__ import annotations

import hashlib
import os
import shutil
import stat
import subprocess
from pathlib import Path

import pytest
from imagetrees import Images

from bootkit_testing.oci import Member

UMOCI = shutil.which("umoci")

LAYERS = [
    [
        Member(".", "d"),
        Member("usr/bin/tool", data=b"tool v1", mode=0o755, xattrs={"user.a": b"1"}),
        Member("usr/bin/tool2", "h", target="usr/bin/tool"),
        Member("usr/bin/setuid", data=b"su", mode=0o4755),
        Member("usr/lib/a/x", data=b"x"),
        Member("usr/lib/a/y", data=b"y"),
        Member("usr/share/doc/pkg/README", data=b"read me"),
        Member("usr/share/keep", data=b"kept"),
        Member("usr/thing/child", data=b"child"),
        Member("usr/file2dir", data=b"a file first"),
        Member("usr/lib64/z", data=b"z"),
        Member("usr/link", "l", target="bin/tool"),
        Member("usr/abs", "l", target="/usr/bin/tool"),
        Member("usr/tmpdir", "d", mode=0o1777),
        Member("etc/conf.d/old1", data=b"1"),
        Member("etc/conf.d/old2", data=b"2"),
        Member("etc/secret", data=b"s3cret", mode=0o600, xattrs={"user.b": b"\x00bin"}),
        Member("etc/same-a", data=b"twin"),
        Member("etc/same-b", "h", target="etc/same-a"),
    ],
    [
        Member("usr/share/doc", "whiteout"),
        Member("usr/lib/a/x", "whiteout"),
        Member("etc/conf.d", "d", mode=0o750),
        Member("etc/conf.d/new", data=b"new"),
        Member("etc/conf.d", "opaque"),
        Member("usr/thing", data=b"was a directory"),
        Member("usr/file2dir", "d", mode=0o700),
        Member("usr/file2dir/inside", data=b"inside"),
        Member("usr/lib64", "l", target="lib"),
        Member("usr/bin/hl", "h", target="usr/bin/tool"),
        Member("usr/lib", "d", mode=0o750, xattrs={"user.dir": b"note"}),
        Member("usr/.wh..wh.plnk", data=b"meta"),
        Member("etc/same-c", "h", target="etc/same-b"),
    ],
    [
        Member("usr/thing", "d"),
        Member("usr/thing/back", data=b"back"),
        Member("usr/bin/tool", data=b"tool v2", mode=0o755),
        Member("usr/nothing", "whiteout"),
        Member("var/lib/state", data=b"state"),
    ],
]


def describe(root: Path) -> tuple[dict[str, tuple[object, ...]], list[set[str]]]:
    """Each path's type, permission bits, content or target and user.* attributes; and
    the names of each file with more than one."""
    found: dict[str, tuple[object, ...]] = {}
    inodes: dict[int, set[str]] = {}
    for parent, dirs, files in os.walk(root):
        for name in dirs + files:
            path = Path(parent, name)
            rel = str(path.relative_to(root))
            st = path.lstat()
            what: object = None
            if stat.S_ISLNK(st.st_mode):
                what = os.readlink(path)
            elif stat.S_ISREG(st.st_mode):
                what = hashlib.sha256(path.read_bytes()).hexdigest()
                inodes.setdefault(st.st_ino, set()).add(rel)
            xattrs = sorted((n, os.getxattr(path, n, follow_symlinks=False))
                            for n in os.listxattr(path, follow_symlinks=False)
                            if n.startswith("user."))
            found[rel] = (stat.S_IFMT(st.st_mode), stat.S_IMODE(st.st_mode), what, xattrs)
    return found, [names for names in inodes.values() if len(names) > 1]


@pytest.mark.skipif(UMOCI is None, reason="umoci is not installed")
def test_the_tree_of_an_image_is_the_one_umoci_unpacks(images: Images, tmp_path: Path) -> None:
    assert UMOCI is not None
    source = images.source(LAYERS, "cmp")
    bundle = tmp_path / "bundle"
    subprocess.run([UMOCI, "unpack", "--rootless", "--image", f"{images.layout.root}:cmp",
                    bundle], check=True, capture_output=True)
    dest = tmp_path / "ours"
    report = source.import_into(dest, images.store, lambda n: None, frozenset())
    ours, our_links = describe(dest)
    theirs, their_links = describe(bundle / "rootfs")
    assert ours == theirs
    # Equal files under usr/ share one stored object, so they may be one inode here
    # without a hardlink in the image; every hardlink of the image must be one.
    for names in their_links:
        assert any(names <= mine for mine in our_links), names
    assert {"usr/bin/hl", "usr/bin/tool2"} in their_links  # the old tool, kept by its links
    assert ours["usr/bin/hl"][2] == hashlib.sha256(b"tool v1").hexdigest()
    assert report.skipped == []
