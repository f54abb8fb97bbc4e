"""Boot Loader Specification Type #1 entries: render, parse, and name them so that
systemd-boot and GRUB's blscfg both list them in bootkit's menu order."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import TypeVar

from bootkit.errors import BootkitError
from bootkit.formats import bootvalues
from bootkit.formats.versioncmp import compare_versions

# Where Type #1 entries live, relative to $BOOT.
ENTRIES_DIR = "loader/entries"
ENTRY_PREFIX = "bootkit-"
# Ranks of the old name format were fixed-width fields: more deployments than this
# would not sort correctly, so a transaction refuses them.
MAX_RANK = 9999
MAX_GENERATION = 99_999_999
MAX_SERIAL = 99_999_999

# An entry's class, the first thing its place in the menu depends on: the default
# first, then the others, those found bad (no boot tries left) last.
BAD, OTHER, DEFAULT = 1, 2, 3

# bootkit-<class><serial>-<generation>-<os>-<id>[+<left>[-<done>]].conf
_NAME_RE = re.compile(
    r"\Abootkit-(?P<cls>[1-3])(?P<serial>\d{8})-(?P<gen>\d{8})-(?P<rest>.+?)"
    r"(?:\+(?P<left>\d+)(?:-(?P<done>\d+))?)?\.conf\Z"
)
# The names of bootkit before: bootkit-<generation>-<priority>-<os>-<id>[+...].conf
_LEGACY_RE = re.compile(
    r"\Abootkit-(?P<gen>\d{8})-(?P<prio>\d{4})-(?P<rest>.+?)"
    r"(?:\+(?P<left>\d+)(?:-(?P<done>\d+))?)?\.conf\Z"
)


@dataclass(frozen=True)
class EntryName:
    """What bootkit encodes in an entry's file name.

    The name depends only on the entry's own deployment: its class, its serial
    number, the generation (the switch) that wrote this text, and its boot counter.
    Other deployments coming and going leave it alone, so a switch writes only the
    entries whose text or place changes. An entry whose text changes is written
    under a new generation, never in place: FAT cannot replace a file atomically.

    GRUB's blscfg lists file names newest version first, systemd-boot sort-keys
    ascending; both put a larger (class, serial, generation) first. Class and serial
    make one field of nine digits, larger than any eight-digit generation that opens
    an old-format name, so that every new name sorts before every old one in both.
    """

    generation: int
    serial: int
    tail: str  # "<os>-<id>"
    cls: int = OTHER
    tries_left: int | None = None
    tries_done: int | None = None
    legacy_rank: int | None = None  # the menu rank in an old-format name

    @property
    def legacy(self) -> bool:
        return self.legacy_rank is not None

    @property
    def stem(self) -> str:
        """The name without the boot counter and `.conf`: what the counter's changes keep."""
        if self.legacy_rank is not None:
            return f"{ENTRY_PREFIX}{self.generation:08d}-{MAX_RANK - self.legacy_rank:04d}-{self.tail}"
        return f"{ENTRY_PREFIX}{self.cls}{self.serial:08d}-{self.generation:08d}-{self.tail}"

    @property
    def filename(self) -> str:
        name = self.stem
        if self.tries_left is not None:
            name += f"+{self.tries_left}"
            if self.tries_done is not None:
                name += f"-{self.tries_done}"
        return name + ".conf"

    @property
    def sort_key(self) -> str:
        # systemd-boot sorts sort-key ascending as plain strings: each field inverted.
        if self.legacy_rank is not None:
            return f"bootkit-{MAX_GENERATION - self.generation:08d}-{self.legacy_rank:04d}"
        return (f"bootkit-{DEFAULT - self.cls}-{MAX_SERIAL - self.serial:08d}"
                f"-{MAX_GENERATION - self.generation:08d}")

    @property
    def precedence(self) -> tuple[int, ...]:
        """Larger for the entry that boots first, in either name format; the larger of
        two entries of one deployment is the one written last."""
        if self.legacy_rank is not None:
            return (0, self.generation, -self.legacy_rank)
        return (1, self.cls, self.serial, self.generation)

    @classmethod
    def parse(cls, filename: str) -> EntryName | None:
        m = _NAME_RE.match(filename)
        if m:
            return cls(
                generation=int(m["gen"]), serial=int(m["serial"]), tail=m["rest"],
                cls=int(m["cls"]), tries_left=_int(m["left"]), tries_done=_int(m["done"]),
            )
        m = _LEGACY_RE.match(filename)
        if not m:
            return None
        rank = MAX_RANK - int(m["prio"])
        return cls(
            generation=int(m["gen"]), serial=0, tail=m["rest"],
            cls=DEFAULT if rank == 0 else OTHER, tries_left=_int(m["left"]),
            tries_done=_int(m["done"]), legacy_rank=rank,
        )


def _int(digits: str | None) -> int | None:
    return int(digits) if digits is not None else None


@dataclass(frozen=True)
class BootEntry:
    """The keys of a Type #1 entry that bootkit writes and reads."""

    title: str
    version: str
    sort_key: str
    linux: str  # empty in an entry that starts an EFI program (`efi`) instead
    initrd: tuple[str, ...]
    options: str
    extra: tuple[tuple[str, str], ...] = field(default=())
    efi: str = ""  # a Unified Kernel Image: its own kernel, initrd and command line

    @property
    def files(self) -> tuple[str, ...]:
        """The paths on $BOOT this entry boots from."""
        return (self.efi,) if self.efi else (self.linux, *self.initrd)

    def render(self) -> str:
        """The entry's text; a value that a reader would take for something else is refused
        (see `bootkit.formats.bootvalues`), so no entry bootkit writes means two things."""
        self._check()
        boot = [f"efi {self.efi}"] if self.efi else [
            f"linux {self.linux}",
            *(f"initrd {i}" for i in self.initrd),
        ]
        lines = [
            f"title {self.title}",
            f"version {self.version}",
            f"sort-key {self.sort_key}",
            *boot,
            f"options {self.options}",
            *(f"{k} {v}" for k, v in self.extra),
        ]
        return "\n".join(lines) + "\n"

    def _check(self) -> None:
        bootvalues.check_title(self.title, "boot entry title")
        bootvalues.check_version(self.version, "boot entry version")
        bootvalues.check_word(self.sort_key, "boot entry sort-key")
        for path in self.files:
            bootvalues.check_path(path, "boot entry file")
        if self.efi and (self.linux or self.initrd):
            raise BootkitError("a boot entry starts either an EFI program or a kernel, not both")
        if self.options:
            bootvalues.check_command_line(self.options, "boot entry options")
        for key, value in self.extra:
            if key in _KNOWN or not _KEY.fullmatch(key):
                raise BootkitError(f"invalid boot entry key {key!r}")
            bootvalues.check_text(value, f"boot entry {key}", bootvalues.MAX_COMMAND_LINE)


_KNOWN = {"title", "version", "sort-key", "linux", "initrd", "options", "efi"}
_KEY = re.compile(r"[a-z][a-z0-9-]*")


def parse_entry(text: str, source: str = "entry") -> BootEntry:
    """Parse an entry; raise BootkitError naming `source` when it is not one."""
    values: dict[str, list[str]] = {}
    extra: list[tuple[str, str]] = []
    for lineno, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        key, _, value = line.partition(" ")
        if not _KEY.fullmatch(key):
            raise BootkitError(f"{source}:{lineno}: not a boot entry line: {raw!r}")
        if key in _KNOWN:
            values.setdefault(key, []).append(value.strip())
        else:
            extra.append((key, value.strip()))
    if "linux" not in values and "efi" not in values:
        raise BootkitError(f"{source}: boot entry has no 'linux' line (and no 'efi' line)")

    def one(key: str) -> str:
        return values.get(key, [""])[-1]

    return BootEntry(
        title=one("title"),
        version=one("version"),
        sort_key=one("sort-key"),
        linux=one("linux"),
        initrd=tuple(values.get("initrd", [])),
        options=" ".join(values.get("options", [])),
        extra=tuple(extra),
        efi=one("efi"),
    )


def systemd_boot_order(entries: list[tuple[str, BootEntry]]) -> list[tuple[str, BootEntry]]:
    """Order (filename, entry) pairs the way systemd-boot's menu (and `bootctl list`) does.

    Entries with no tries left go last; entries with a sort-key come before those
    without; then sort-key and machine-id as plain strings, version newest first (UAPI
    version comparison), the id newest first; finally more tries left, fewer tries done.
    """

    def cmp(x: tuple[str, BootEntry], y: tuple[str, BootEntry]) -> int:
        (fx, ex), (fy, ey) = x, y
        (left_x, done_x), (left_y, done_y) = _tries(fx), _tries(fy)
        if r := _cmp(left_x == 0, left_y == 0):
            return r
        if r := _cmp(not ex.sort_key, not ey.sort_key):
            return r
        if ex.sort_key and ey.sort_key:
            if r := _cmp(ex.sort_key, ey.sort_key):
                return r
            if r := _cmp(_machine_id(ex), _machine_id(ey)):
                return r
            if r := compare_versions(ex.version, ey.version):
                return -r
        if r := compare_versions(_entry_id(fx), _entry_id(fy)):
            return -r
        if left_x is None or left_y is None:
            return 0
        return _cmp(left_y, left_x) or _cmp(done_x or 0, done_y or 0)

    from functools import cmp_to_key

    return sorted(entries, key=cmp_to_key(cmp))


_Ordered = TypeVar("_Ordered", int, str, bool)


def _cmp(a: _Ordered, b: _Ordered) -> int:
    return int(a > b) - int(a < b)


def _machine_id(entry: BootEntry) -> str:
    return next((v for k, v in entry.extra if k == "machine-id"), "")


_COUNTER_RE = re.compile(r"\+(\d+)(?:-(\d+))?(?=\.conf\Z)")


def _tries(filename: str) -> tuple[int | None, int | None]:
    """(tries left, tries done) from a boot-counting suffix such as `+3-1.conf`."""
    m = _COUNTER_RE.search(filename)
    if not m:
        return None, None
    return int(m[1]), int(m[2]) if m[2] is not None else None


def blscfg_order(filenames: list[str]) -> list[str]:
    """Order file names the way GRUB's blscfg does: by name, newest version first."""
    from functools import cmp_to_key

    def newest_first(a: str, b: str) -> int:
        return -compare_versions(_entry_id(a), _entry_id(b))

    return sorted(filenames, key=cmp_to_key(newest_first))


def _entry_id(filename: str) -> str:
    # The entry's id: its file name without the boot-counting suffix.
    return _COUNTER_RE.sub("", filename)
