"""Which files a dynamically linked program needs at run time, read from its ELF headers.

The answer is what the dynamic loader would open: the interpreter named by
PT_INTERP, then every DT_NEEDED library, searched the way ld.so searches
(DT_RPATH of the requesting object and its loaders when it has no
DT_RUNPATH, then DT_RUNPATH, then the ld.so.conf directories, then the
built-in default directories), recursively. Nothing is executed, so this
also works for programs of another architecture and never runs ldd.
"""

from __future__ import annotations

import glob
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from elftools.common.exceptions import ELFError
from elftools.elf.dynamic import DynamicSection
from elftools.elf.elffile import ELFFile
from elftools.elf.segments import InterpSegment

from bootkit.errors import BootkitError

ELF_MAGIC = b"\x7fELF"
LD_SO_CONF = Path("/etc/ld.so.conf")
# glibc's built-in trusted directories on Debian-style (multiarch) and
# Fedora-style (lib64) systems; ld.so always falls back to them.
_DEFAULT_DIRS = {
    ("ELFCLASS64", "EM_X86_64"): ("/lib/x86_64-linux-gnu", "/usr/lib/x86_64-linux-gnu"),
    ("ELFCLASS64", "EM_AARCH64"): ("/lib/aarch64-linux-gnu", "/usr/lib/aarch64-linux-gnu"),
    ("ELFCLASS32", "EM_386"): ("/lib/i386-linux-gnu", "/usr/lib/i386-linux-gnu"),
}
_LIB64_DIRS = ("/lib64", "/usr/lib64")
_LIB_DIRS = ("/lib", "/usr/lib")


@dataclass(frozen=True)
class ElfObject:
    """The parts of an ELF file's headers that decide what it loads."""

    path: Path
    elf_class: str
    machine: str
    interpreter: str | None
    soname: str | None
    needed: tuple[str, ...]
    rpath: tuple[str, ...]
    runpath: tuple[str, ...]

    @property
    def abi(self) -> tuple[str, str]:
        return (self.elf_class, self.machine)


def is_elf(path: Path) -> bool:
    try:
        with open(path, "rb") as f:
            return f.read(4) == ELF_MAGIC
    except OSError:
        return False


def read_elf(path: Path) -> ElfObject | None:
    """Read `path`'s loading information, or None when it is not an ELF file (e.g. a script)."""
    with open(path, "rb") as f:
        if f.read(4) != ELF_MAGIC:
            return None
        f.seek(0)
        try:
            elf = ELFFile(f)
            interpreter = None
            for segment in elf.iter_segments():
                if isinstance(segment, InterpSegment):
                    interpreter = segment.get_interp_name()
            soname = None
            needed: list[str] = []
            rpath: list[str] = []
            runpath: list[str] = []
            for section in elf.iter_sections():
                if not isinstance(section, DynamicSection):
                    continue
                # pyelftools sets a tag's value as an attribute named for its kind.
                tag: Any
                for tag in section.iter_tags():
                    if tag.entry.d_tag == "DT_NEEDED":
                        needed.append(tag.needed)
                    elif tag.entry.d_tag == "DT_SONAME":
                        soname = tag.soname
                    elif tag.entry.d_tag == "DT_RPATH":
                        rpath.extend(p for p in tag.rpath.split(":") if p)
                    elif tag.entry.d_tag == "DT_RUNPATH":
                        runpath.extend(p for p in tag.runpath.split(":") if p)
            return ElfObject(
                path=path,
                elf_class=f"ELFCLASS{elf.elfclass}",
                machine=elf["e_machine"],
                interpreter=interpreter,
                soname=soname,
                needed=tuple(needed),
                rpath=tuple(rpath),
                runpath=tuple(runpath),
            )
        except ELFError as err:
            raise BootkitError(f"cannot read ELF file {path}: {err}") from err


def ld_so_conf_dirs(conf: Path = LD_SO_CONF) -> list[Path]:
    """Directories listed in ld.so.conf, following its `include` globs (what ldconfig caches)."""
    dirs: list[Path] = []
    seen: set[Path] = set()

    def parse(path: Path) -> None:
        if path in seen:
            return
        seen.add(path)
        try:
            lines = path.read_text().splitlines()
        except OSError:
            return
        for line in lines:
            line = line.split("#", 1)[0].strip()
            if not line:
                continue
            if line.startswith("include"):
                for pattern in line.split()[1:]:
                    if not pattern.startswith("/"):
                        pattern = str(path.parent / pattern)
                    for included in sorted(glob.glob(pattern)):
                        parse(Path(included))
            elif not line.startswith("hwcap"):
                dirs.append(Path(line))

    parse(conf)
    return dirs


def default_dirs(abi: tuple[str, str]) -> list[Path]:
    multiarch = _DEFAULT_DIRS.get(abi, ())
    lib = _LIB64_DIRS if abi[0] == "ELFCLASS64" else ()
    return [Path(d) for d in (*multiarch, *lib, *_LIB_DIRS)]


class LibraryResolver:
    """Finds the files ld.so would load for a set of programs."""

    def __init__(self, conf_dirs: Sequence[Path] | None = None) -> None:
        self._conf_dirs = list(ld_so_conf_dirs() if conf_dirs is None else conf_dirs)
        self._cache: dict[Path, ElfObject | None] = {}

    def _read(self, path: Path) -> ElfObject | None:
        if path not in self._cache:
            self._cache[path] = read_elf(path)
        return self._cache[path]

    def closure(self, programs: Iterable[Path]) -> list[Path]:
        """`programs` followed by every interpreter and library they need, each once, in order."""
        result: dict[Path, None] = {}
        for program in programs:
            # ld.so satisfies a DT_NEEDED by any object already loaded under that
            # soname, which is how libc's need for the interpreter is met.
            loaded: set[str] = set()
            if not program.is_file():
                raise BootkitError(f"{program} does not exist or is not a file")
            result[program] = None
            obj = self._read(program)
            if obj is None:
                continue  # a script or data file: copied as it is
            if obj.interpreter:
                interp = Path(obj.interpreter)
                if not interp.is_file():
                    raise BootkitError(
                        f"{program} needs the interpreter {interp}, which does not exist"
                    )
                result.setdefault(interp, None)
                interp_obj = self._read(interp)
                loaded.add((interp_obj and interp_obj.soname) or interp.name)
            self._add_needed(obj, loaders=(), result=result, loaded=loaded)
        return list(result)

    def _add_needed(
        self,
        obj: ElfObject,
        loaders: tuple[ElfObject, ...],
        result: dict[Path, None],
        loaded: set[str],
    ) -> None:
        chain = (*loaders, obj)
        for name in obj.needed:
            if name in loaded:
                continue
            lib = self.find(name, obj, loaders)
            if lib is None:
                raise BootkitError(
                    f"{obj.path} needs {name}, which is in none of the library directories",
                    hint="install the library, or add its directory to /etc/ld.so.conf",
                )
            loaded.add(name)
            lib_obj = self._read(lib)
            if lib_obj is not None and lib_obj.soname:
                loaded.add(lib_obj.soname)
            if lib in result:
                continue
            result[lib] = None
            if lib_obj is not None:
                self._add_needed(lib_obj, chain, result, loaded)

    def find(
        self, name: str, requester: ElfObject, loaders: Sequence[ElfObject] = ()
    ) -> Path | None:
        """The file that satisfies DT_NEEDED `name` of `requester`, as ld.so searches."""
        if "/" in name:
            candidate = Path(expand_origin(name, requester.path))
            return candidate if self._compatible(candidate, requester) else None
        search: list[Path] = []
        if not requester.runpath:
            # DT_RPATH of the object and of everything that loaded it, nearest first.
            for holder in (requester, *reversed(loaders)):
                search += [Path(expand_origin(p, holder.path)) for p in holder.rpath]
        search += [Path(expand_origin(p, requester.path)) for p in requester.runpath]
        search += self._conf_dirs
        search += default_dirs(requester.abi)
        for directory in search:
            candidate = directory / name
            if self._compatible(candidate, requester):
                return candidate
        return None

    def _compatible(self, candidate: Path, requester: ElfObject) -> bool:
        if not candidate.is_file():
            return False
        # ld.so skips libraries of another class or machine and keeps searching.
        obj = self._read(candidate)
        return obj is not None and obj.abi == requester.abi


def expand_origin(path: str, obj_path: Path) -> str:
    origin = str(obj_path.resolve().parent)
    return path.replace("${ORIGIN}", origin).replace("$ORIGIN", origin)


def runtime_files(programs: Iterable[Path]) -> list[Path]:
    """`programs` plus everything they load, in a stable order."""
    return LibraryResolver().closure(programs)
