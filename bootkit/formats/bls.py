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
# Ranks are encoded in fixed-width fields; more deployments than this would not
# sort correctly, so the transaction refuses them.
MAX_RANK = 9999
MAX_GENERATION = 99_999_999

# bootkit-<generation>-<priority>-<os>-<id>[+<left>[-<done>]].conf
_NAME_RE = re.compile(
    r"\Abootkit-(?P<gen>\d{8})-(?P<prio>\d{4})-(?P<rest>.+?)"
    r"(?:\+(?P<left>\d+)(?:-(?P<done>\d+))?)?\.conf\Z"
)


@dataclass(frozen=True)
class EntryName:
    """What bootkit encodes in an entry's file name."""

    generation: int
    rank: int
    tail: str  # "<os>-<id>"
    tries_left: int | None = None
    tries_done: int | None = None

    @property
    def filename(self) -> str:
        # Newer generations and better ranks get larger numbers: GRUB's blscfg lists
        # file names in descending version order, newest first.
        name = f"{ENTRY_PREFIX}{self.generation:08d}-{MAX_RANK - self.rank:04d}-{self.tail}"
        if self.tries_left is not None:
            name += f"+{self.tries_left}"
            if self.tries_done is not None:
                name += f"-{self.tries_done}"
        return name + ".conf"

    @property
    def sort_key(self) -> str:
        # systemd-boot sorts sort-key ascending; while a crash leaves two generations
        # on the ESP, the newer one must come first, hence the inverted generation.
        return f"bootkit-{MAX_GENERATION - self.generation:08d}-{self.rank:04d}"

    @classmethod
    def parse(cls, filename: str) -> EntryName | None:
        m = _NAME_RE.match(filename)
        if not m:
            return None
        return cls(
            generation=int(m["gen"]),
            rank=MAX_RANK - int(m["prio"]),
            tail=m["rest"],
            tries_left=int(m["left"]) if m["left"] is not None else None,
            tries_done=int(m["done"]) if m["done"] is not None else None,
        )


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
