"""What a value may hold to reach a boot configuration file: one set of rules, used
where a value enters bootkit and again where a bootloader file is rendered.

A value reaches up to four readers, and must mean the same to each of them:

- the BLS entry as systemd-boot reads it: one line per key, the rest of the line
  taken verbatim (so no line break and no control character, and no leading or
  trailing blank, which a reader strips);
- the BLS entry as GRUB's `blscfg` reads it: it expands `$variables` in `options`
  and pastes `linux`, `options` and `initrd` unquoted into GRUB script;
- bootkit's GRUB slot file, where every value is quoted (`grubscript.quote`), and
  GRUB's `linux` command, which in some versions escapes `'`, `\\` and `"` with a
  backslash on the way to the kernel;
- the kernel's own command-line parser, and FAT, where the kernel version names a
  directory on the ESP.

Anything outside these rules is refused with an error that says why; nothing is
quietly changed into something else.
"""

from __future__ import annotations

import functools
import re
import unicodedata

from bootkit.errors import BootkitError

# Boot counting: GRUB script has no arithmetic, so a slot file holds one branch per
# possible try; this bounds the slot file (see `grubscript.render_slot`).
MAX_TRIES = 100
# Boot menu timeout, seconds.
MAX_TIMEOUT = 3600
# The kernel's COMMAND_LINE_SIZE on x86 and arm64: it cuts a longer command line.
MAX_COMMAND_LINE = 2048
# A kernel release (`uname -r`) has at most 64 characters (__NEW_UTS_LEN).
MAX_KERNEL_VERSION = 64
MAX_VERSION = 64
MAX_TITLE = 255
# A GRUB menu title is the deployment's title, version and id together.
MAX_MENU_TITLE = MAX_TITLE + MAX_VERSION + 80

_KERNEL_VERSION = re.compile(rf"[0-9][A-Za-z0-9._+-]{{0,{MAX_KERNEL_VERSION - 1}}}")
_KERNEL_VERSION_RULE = (
    "a kernel release starts with a digit and holds only letters, digits and . _ + - "
    f"(at most {MAX_KERNEL_VERSION} characters)"
)
# A file or directory name on $BOOT, an entry id, a sort key: plain words only.
_WORD = re.compile(r"[A-Za-z0-9_+-][A-Za-z0-9._+-]*")
# Bidirectional overrides and isolates: they make a title display as something else.
_BIDI_CONTROLS = frozenset("\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")

# What a kernel argument may not hold, and why (see the readers above).
_ARGUMENT_REFUSALS: dict[str, str] = {
    **dict.fromkeys("'\\", "GRUB's linux command passes it to the kernel escaped"),
    "$": "GRUB expands variables in a boot entry's options",
    **dict.fromkeys(";|&<>{}", "GRUB script reads it as an operator where GRUB reads an "
                    "entry's options"),
    **dict.fromkeys("*?", "GRUB may expand it as a file-name wildcard"),
}
_ARGUMENT_HINT = (
    "give one kernel argument at a time: printable ASCII without spaces, "
    "' \\ $ ; | & < > { } * ?; a double quote only around the value (name=\"value\")"
)
# The forms in which a double quote means the same to every reader: around the
# whole argument, or around the value after the first `=`.
_QUOTED_ARGUMENT = re.compile(r'"[^"]+"|[^"=]+="[^"]*"')


def _refuse(what: str, value: object, reason: str, hint: str | None) -> BootkitError:
    return BootkitError(f"invalid {what} {value!r}: {reason}", hint=hint)


def _text_problem(value: object, limit: int) -> str | None:
    """Why `value` cannot be one line of a boot configuration file, or None."""
    if not isinstance(value, str):
        return f"it is not text but {type(value).__name__}"
    if not value:
        return "it is empty"
    if len(value) > limit:
        return f"it is longer than {limit} characters"
    for ch in value:
        # Cc: control characters (line breaks among them); Zl, Zp: line and paragraph
        # separators; Cs: a lone surrogate (a file name byte that is not UTF-8).
        if unicodedata.category(ch) in ("Cc", "Cs", "Zl", "Zp") or ch in _BIDI_CONTROLS:
            return f"it holds the control character U+{ord(ch):04X}"
    if value != value.strip():
        return "it begins or ends with a blank"
    return None


def check_text(value: object, what: str, limit: int, hint: str | None = None) -> str:
    """`value` as one line of text a boot entry or a GRUB menu can carry, or refuse it."""
    problem = _text_problem(value, limit)
    if problem is not None:
        raise _refuse(what, value, problem, hint)
    assert isinstance(value, str)
    return value


def check_title(value: object, what: str = "title", hint: str | None = None) -> str:
    return check_text(value, what, MAX_TITLE, hint)


def check_version(value: object, what: str = "version", hint: str | None = None) -> str:
    return check_text(value, what, MAX_VERSION, hint)


def check_kernel_version(
    value: object, what: str = "kernel version", hint: str | None = None
) -> str:
    """A kernel release such as 6.1.0-18-amd64: it names a directory on $BOOT (FAT too)."""
    if not isinstance(value, str) or not _KERNEL_VERSION.fullmatch(value):
        raise _refuse(what, value, _KERNEL_VERSION_RULE, hint)
    return value


def check_word(value: object, what: str) -> str:
    """A file name on $BOOT, an entry id or a sort key: letters, digits, . _ + -."""
    if not _is_word(value):
        raise _refuse(what, value, "use only letters, digits and . _ + -, at most 255", None)
    assert isinstance(value, str)
    return value


def check_path(value: object, what: str) -> str:
    """An absolute path of plain words, as GRUB and a BLS entry name a file on $BOOT."""
    if not isinstance(value, str) or not value.startswith("/"):
        raise _refuse(what, value, "it is not an absolute path", None)
    if not all(_is_word(part) for part in value[1:].split("/")):
        raise _refuse(what, value, "name its directories and file with letters, digits "
                      "and . _ + - only", None)
    return value


def _is_word(value: object) -> bool:
    return isinstance(value, str) and len(value) <= 255 and bool(_WORD.fullmatch(value))


def _argument_problem(value: object) -> str | None:
    if not isinstance(value, str):
        return f"it is not text but {type(value).__name__}"
    return _text_argument_problem(value)


# Every entry of a large menu carries the same few arguments (root=, rw, the image's),
# and each is checked where the command line is made and again where it is written.
@functools.lru_cache(maxsize=4096)
def _text_argument_problem(value: str) -> str | None:
    if not value:
        return "it is empty"
    for ch in value:
        if ch.isspace():
            return "it holds a blank"
        if not " " < ch < "\x7f":
            return f"it holds U+{ord(ch):04X}, and kernel arguments are printable ASCII"
        if ch in _ARGUMENT_REFUSALS:
            return f"{ch!r}: {_ARGUMENT_REFUSALS[ch]}"
    if value.startswith("#"):
        return "GRUB reads an argument that starts with '#' as a comment"
    if value in ("[[", "]]"):
        return "GRUB script reads it as a keyword"
    if '"' in value and not _QUOTED_ARGUMENT.fullmatch(value):
        return 'a double quote may only enclose the whole argument or its value (name="value")'
    if len(value) > MAX_COMMAND_LINE // 2:
        return f"it is longer than {MAX_COMMAND_LINE // 2} characters"
    return None


def check_kernel_argument(value: object, what: str = "kernel argument") -> str:
    """One kernel argument that every reader passes to the kernel unchanged in meaning."""
    problem = _argument_problem(value)
    if problem is not None:
        raise _refuse(what, value, problem, _ARGUMENT_HINT)
    assert isinstance(value, str)
    return value


def check_command_line(value: object, what: str = "kernel command line") -> str:
    """Kernel arguments joined by single spaces, no longer than the kernel reads."""
    if not isinstance(value, str):
        raise _refuse(what, value, f"it is not text but {type(value).__name__}", None)
    if len(value.encode()) > MAX_COMMAND_LINE:
        raise BootkitError(
            f"the {what} would be {len(value.encode())} bytes; the kernel reads at most "
            f"{MAX_COMMAND_LINE}",
            hint="use fewer or shorter kernel arguments",
        )
    for argument in value.split(" "):
        check_kernel_argument(argument, f"argument in the {what}")
    return value


def _check_count(value: object, what: str, most: int, unit: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= most:
        raise BootkitError(
            f"invalid {what} {value!r}: it must be a whole number from 0 to {most}{unit}"
        )
    return value


def check_tries(value: object, what: str = "number of boot tries") -> int:
    """Boot tries of an entry: 0 (not counted) to MAX_TRIES."""
    return _check_count(value, what, MAX_TRIES, "")


def check_timeout(value: object, what: str = "boot menu timeout") -> int:
    """Seconds the boot menu waits: 0 to MAX_TIMEOUT."""
    return _check_count(value, what, MAX_TIMEOUT, " seconds")
