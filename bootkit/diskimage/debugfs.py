"""One door to debugfs: scripts of commands run against an ext4 filesystem in an image file.

e2fsprogs tools address a filesystem that starts `offset` bytes into a file as
`image?offset=N`. debugfs echoes each command of a script as a line
`debugfs: <command>` before its output, which is how one run's output is split
back into one answer per command.
"""

from __future__ import annotations

import re
import tempfile
from pathlib import Path

from bootkit.base import process
from bootkit.errors import BootkitError

_ECHO = re.compile(r"^debugfs: (.*)\n", re.MULTILINE)


def device(image: Path, offset: int) -> str:
    return f"{image}?offset={offset}"


def run_script(image: Path, offset: int, commands: list[str], write: bool = False) -> str:
    """Run `commands` in one debugfs; its output. With `write`, the filesystem is changed,
    and any complaint (debugfs exits 0 whatever a command did) is an error."""
    what = "changing the root filesystem" if write else "reading the root filesystem"
    with tempfile.NamedTemporaryFile("w", prefix="bootkit-debugfs-", suffix=".cmd") as script:
        script.write("\n".join(commands) + "\n")
        script.flush()
        proc = process.run(
            ["debugfs", *(["-w"] if write else []), "-f", script.name, device(image, offset)],
            what,
        )
    if write:
        errors = [line for line in proc.stderr.decode(errors="replace").splitlines()
                  if line.strip() and not line.startswith("debugfs ")]
        if errors:
            raise BootkitError(f"{what} failed: {errors[0]}")
    return proc.stdout.decode("utf-8", errors="surrogateescape")


def answers(image: Path, offset: int, commands: list[str]) -> list[str]:
    """The output of each command (read only), in order.

    Only the echo at the start of a line splits the output, and each echo must be the
    command that was sent: output that looks otherwise (a name printed with a line
    break in it) is refused rather than read as something else.
    """
    if not commands:
        return []
    parts = _ECHO.split(run_script(image, offset, commands))
    echoed, outputs = parts[1::2], parts[2::2]
    if echoed != commands:
        raise BootkitError("debugfs printed an unexpected answer while reading the root filesystem",
                           hint="the filesystem may be damaged: check it with e2fsck")
    return outputs
