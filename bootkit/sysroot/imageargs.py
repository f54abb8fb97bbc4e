"""Kernel arguments an OS image ships: `usr/lib/bootkit/kargs.d/*.conf` in its tree.

They belong to the image, as its kernel does: a deployment records them apart from
the admin's (`Deployment.image_kargs` beside `Deployment.kargs`), and the next
deployment takes the new image's instead of keeping the old one's.

Format: the `.conf` files are read in file-name order, one argument per line; a
line whose first character (after blanks) is `#` is a comment, and blank lines are
skipped. Each argument must pass `bootvalues.check_kernel_argument`; an error names
the file and the line. The tree is read as its own root (`bootkit.base.confined`),
so a symlinked directory or file is followed inside the tree and never out of it.
"""

from __future__ import annotations

from pathlib import Path, PurePosixPath

from bootkit.base.confined import Tree
from bootkit.contract import BOOTKIT_ARG
from bootkit.errors import BootkitError
from bootkit.formats import bootvalues

KARGS_DIR = "usr/lib/bootkit/kargs.d"
KARGS_SUFFIX = ".conf"
# A hostile tree must not make bootkit read without end; a real image ships a few
# short files, and the kernel command line bounds what they can hold anyway.
MAX_FILES = 64
MAX_FILE_BYTES = 64 << 10
# Arguments bootkit writes itself: `bootkit=` names the deployment, `root=` is the
# sysroot's setting. Neither the admin nor an image may set them.
RESERVED = (BOOTKIT_ARG, "root")


def check_settable(karg: str, what: str = "kernel argument") -> str:
    """`karg` as `check_kernel_argument` allows it, and not one that bootkit sets itself."""
    bootvalues.check_kernel_argument(karg, what)
    # As the kernel reads it: quotes around the argument do not hide its name.
    if argument_name(karg) in RESERVED:
        raise BootkitError(
            f"invalid {what} {karg!r}: bootkit sets it itself",
            hint=f"{BOOTKIT_ARG}= names the deployment; root= is the sysroot's setting",
        )
    return karg


def argument_name(karg: str) -> str:
    """The name of a kernel argument, as the kernel reads it: `console` of `console=ttyS0`."""
    return karg.replace('"', "").partition("=")[0]


def read_image_kargs(root: Path) -> tuple[str, ...]:
    """The kernel arguments the tree at `root` ships, in order; none without kargs.d."""
    tree = Tree(root)
    names = [n for n in tree.listdir(KARGS_DIR) if n.endswith(KARGS_SUFFIX)]
    if len(names) > MAX_FILES:
        raise BootkitError(
            f"{tree.describe(KARGS_DIR)} holds {len(names)} {KARGS_SUFFIX} files; bootkit "
            f"reads at most {MAX_FILES}",
            hint="ship the image's kernel arguments in fewer files",
        )
    found: list[str] = []
    for name in names:
        found += _read_file(tree, PurePosixPath(KARGS_DIR, name))
    return tuple(found)


def _read_file(tree: Tree, rel: PurePosixPath) -> list[str]:
    try:
        data = tree.read(rel, MAX_FILE_BYTES)
    except (FileNotFoundError, NotADirectoryError):
        raise BootkitError(
            f"{tree.describe(rel)} leads nowhere inside the tree",
            hint="a symlink in kargs.d must name a file of the image itself",
        ) from None
    found = []
    for number, line in enumerate(data.decode(errors="replace").splitlines(), 1):
        text = line.strip()
        if not text or text.startswith("#"):
            continue
        try:
            found.append(check_settable(text, "image kernel argument"))
        except BootkitError as err:
            raise BootkitError(
                f"{tree.describe(rel)} line {number}: {err.message}",
                hint=f"one kernel argument per line; {err.hint}" if err.hint else None,
            ) from None
    return found
