"""Kernel modules and the order to load them in, read from the modules themselves.

Every module carries a `.modinfo` ELF section of NUL-separated `key=value`
strings: `depends=` names the modules whose symbols it uses, `softdep=pre:`
the ones it wants loaded first without linking to them (ext4 asks for
`crypto-crc32c` that way), `alias=` the other names it answers to, and
`vermagic=` the kernel release it was built for. Reading those directly means
a kernel package unpacked with `dpkg -x`, which has no modules.dep, is enough.
"""

from __future__ import annotations

import fnmatch
import gzip
import io
import lzma
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from elftools.common.exceptions import ELFError
from elftools.elf.elffile import ELFFile

from bootkit.base import process
from bootkit.errors import BootkitError

# Suffix -> compression, longest first so ".ko.xz" is not taken for ".ko".
MODULE_SUFFIXES = (".ko.zst", ".ko.xz", ".ko.gz", ".ko")
# depmod prefers these directories over kernel/ when a name appears twice.
_PREFERRED_DIRS = ("updates", "extra")
# Where crypto drivers live; a `crypto-*` alias is looked for there first.
_CRYPTO_DIRS = ("kernel/crypto", "kernel/arch")


def module_name(filename: str) -> str:
    """The name the kernel knows a module file by: no suffix, dashes as underscores."""
    for suffix in MODULE_SUFFIXES:
        if filename.endswith(suffix):
            filename = filename[: -len(suffix)]
            break
    return normalize(filename)


def normalize(name: str) -> str:
    return name.replace("-", "_")


def is_module_file(filename: str) -> bool:
    return filename.endswith(MODULE_SUFFIXES)


def uncompressed_name(relpath: PurePosixPath) -> PurePosixPath:
    for suffix in MODULE_SUFFIXES:
        if relpath.name.endswith(suffix):
            return relpath.with_name(relpath.name[: -len(suffix)] + ".ko")
    return relpath


def read_module(path: Path) -> bytes:
    """The module's ELF bytes, decompressed if it is stored as .ko.xz, .ko.zst or .ko.gz."""
    data = path.read_bytes()
    name = path.name
    try:
        if name.endswith(".ko.xz"):
            return lzma.decompress(data)
        if name.endswith(".ko.gz"):
            return gzip.decompress(data)
    except (lzma.LZMAError, OSError, EOFError) as err:
        raise BootkitError(f"cannot decompress kernel module {path}: {err}") from err
    if name.endswith(".ko.zst"):
        return _unzstd(data, path)
    return data


def _unzstd(data: bytes, path: Path) -> bytes:
    try:
        return process.run(
            ["zstd", "-d", "-c", "-q"], f"decompressing the kernel module {path}", input=data
        ).stdout
    except process.MissingProgram as err:
        raise BootkitError(f"{path} is zstd-compressed and {err.message}", hint=err.hint) from None


def parse_modinfo(elf_bytes: bytes, origin: Path | str = "module") -> dict[str, list[str]]:
    """The `.modinfo` section as key -> values, in the order the module lists them."""
    try:
        section = ELFFile(io.BytesIO(elf_bytes)).get_section_by_name(".modinfo")
    except ELFError as err:
        raise BootkitError(f"{origin} is not a kernel module (not ELF: {err})") from err
    if section is None:
        raise BootkitError(f"{origin} is not a kernel module (no .modinfo section)")
    info: dict[str, list[str]] = {}
    for entry in section.data().split(b"\0"):
        key, sep, value = entry.decode("utf-8", "replace").partition("=")
        if sep:
            info.setdefault(key, []).append(value)
    return info


def softdeps_before(values: Iterable[str]) -> list[str]:
    """Module names listed after `pre:` in `softdep=` values (`post:` ones load later)."""
    names: list[str] = []
    for value in values:
        current = None
        for token in value.split():
            if token in ("pre:", "post:"):
                current = token
            elif current == "pre:":
                names.append(token)
    return names


@dataclass(frozen=True)
class Module:
    """One loadable module file and what its .modinfo says."""

    name: str
    path: Path
    relpath: PurePosixPath
    depends: tuple[str, ...]
    softdep_pre: tuple[str, ...]
    aliases: tuple[str, ...]
    vermagic: str | None

    @property
    def kernel_release(self) -> str | None:
        return self.vermagic.split()[0] if self.vermagic else None

    @property
    def installed_relpath(self) -> PurePosixPath:
        """Where the (decompressed) module goes under lib/modules/<kver>/."""
        return uncompressed_name(self.relpath)


@dataclass
class LoadOrder:
    """Modules to insmod, dependencies first, and what was left out and why."""

    modules: list[Module] = field(default_factory=list)
    builtin: list[str] = field(default_factory=list)
    missing_softdeps: list[str] = field(default_factory=list)
    # Reached only through soft dependencies: failing to load them is not an
    # error (crc32c_intel needs SSE4.2; crc32c_generic then does the work).
    optional: set[str] = field(default_factory=set)


class ModuleTree:
    """The modules of one kernel release under `lib/modules/<kver>`."""

    def __init__(self, directory: Path) -> None:
        if not directory.is_dir():
            raise BootkitError(f"kernel modules directory {directory} does not exist")
        self.directory = directory
        self._files = self._scan_files()
        self._builtin = self._read_builtin()
        self._builtin_aliases = self._read_builtin_aliases()
        self._alias_patterns = self._read_modules_alias()
        self._info: dict[str, Module] = {}

    def _scan_files(self) -> dict[str, str]:
        """Module name -> path relative to the directory, preferred directories first."""

        def rank(subdir: str) -> tuple[int, str]:
            preferred = subdir in _PREFERRED_DIRS
            return (_PREFERRED_DIRS.index(subdir) if preferred else len(_PREFERRED_DIRS), subdir)

        files: dict[str, str] = {}
        top = sorted((e.name for e in os.scandir(self.directory) if e.is_dir()), key=rank)
        for subdir in top:
            for dirpath, dirnames, filenames in os.walk(self.directory / subdir):
                dirnames.sort()
                rel = os.path.relpath(dirpath, self.directory)
                for filename in sorted(filenames):
                    if is_module_file(filename):
                        files.setdefault(module_name(filename), f"{rel}/{filename}")
        return files

    def _read_builtin(self) -> set[str]:
        path = self.directory / "modules.builtin"
        if not path.is_file():
            return set()
        return {module_name(PurePosixPath(line).name) for line in path.read_text().split()}

    def _read_builtin_aliases(self) -> dict[str, str]:
        path = self.directory / "modules.builtin.modinfo"
        if not path.is_file():
            return {}
        aliases: dict[str, str] = {}
        for entry in path.read_bytes().split(b"\0"):
            key, sep, value = entry.decode("utf-8", "replace").partition("=")
            module, dot, field_name = key.partition(".")
            if sep and dot and field_name == "alias":
                aliases.setdefault(value, normalize(module))
        return aliases

    def _read_modules_alias(self) -> list[tuple[str, str]] | None:
        # Written by depmod; an unpacked package has none, then aliases are
        # looked up in the modules themselves.
        path = self.directory / "modules.alias"
        if not path.is_file():
            return None
        patterns = []
        for line in path.read_text().splitlines():
            parts = line.split()
            if len(parts) == 3 and parts[0] == "alias":
                patterns.append((parts[1], normalize(parts[2])))
        return patterns

    @property
    def names(self) -> list[str]:
        return sorted(self._files)

    def is_builtin(self, name: str) -> bool:
        return normalize(name) in self._builtin

    def has_module(self, name: str) -> bool:
        return normalize(name) in self._files

    def module(self, name: str) -> Module:
        name = normalize(name)
        if name not in self._info:
            relpath = self._files.get(name)
            if relpath is None:
                raise BootkitError(
                    f"kernel module {name} is not in {self.directory}",
                    hint="check the name (modinfo NAME on a running system) and the modules directory",
                )
            path = self.directory / relpath
            info = parse_modinfo(read_module(path), path)
            depends = [d for v in info.get("depends", []) for d in v.split(",") if d]
            self._info[name] = Module(
                name=name,
                path=path,
                relpath=PurePosixPath(relpath),
                depends=tuple(normalize(d) for d in depends),
                softdep_pre=tuple(softdeps_before(info.get("softdep", []))),
                aliases=tuple(info.get("alias", [])),
                vermagic=next(iter(info.get("vermagic", [])), None),
            )
        return self._info[name]

    def resolve(self, name: str) -> list[str] | None:
        """Module names that provide `name` (a module name or an alias).

        [] means the kernel has it built in; None means nothing provides it.
        """
        if self.has_module(name):
            return [normalize(name)]
        if self.is_builtin(name) or name in self._builtin_aliases:
            return []
        if self._alias_patterns is not None:
            found = [
                mod for pattern, mod in self._alias_patterns if fnmatch.fnmatchcase(name, pattern)
            ]
            return list(dict.fromkeys(found)) or None
        return self._scan_for_alias(name) or None

    def _scan_for_alias(self, alias: str) -> list[str]:
        # Reading every module costs about a second, so likely providers are
        # tried first and the first group with any provider wins: modules
        # named like the alias (crc32c_generic for crypto-crc32c), then the
        # crypto directories, then everything.
        needle = f"alias={alias}\0".encode()
        stem = normalize(alias.removeprefix("crypto-"))
        groups = (
            lambda rel, name: name.startswith(stem),
            lambda rel, name: rel.startswith(_CRYPTO_DIRS),
            lambda rel, name: True,
        )
        searched: set[str] = set()
        for in_group in groups:
            found = []
            for name, rel in self._files.items():
                if name in searched or not in_group(rel, name):
                    continue
                searched.add(name)
                path = self.directory / rel
                data = read_module(path)
                if needle in data and alias in parse_modinfo(data, path).get("alias", []):
                    found.append(name)
            if found:
                return found
        return []


def load_order(
    tree: ModuleTree, names: Sequence[str], kernel_release: str | None = None
) -> LoadOrder:
    """Everything `names` need, each module after its dependencies and pre-softdeps.

    `names` may be module names or aliases. A requested name nothing provides
    is an error; a soft dependency nothing provides is recorded and skipped,
    as modprobe does.
    """
    order = LoadOrder()
    done: set[str] = set()
    active: list[str] = []

    def visit(name: str, soft: bool = False) -> None:
        if name in done or (soft and name in active):
            return
        if name in active:
            cycle = " -> ".join([*active[active.index(name) :], name])
            raise BootkitError(f"kernel module dependency cycle: {cycle}")
        active.append(name)
        module = tree.module(name)
        if kernel_release and module.kernel_release and module.kernel_release != kernel_release:
            raise BootkitError(
                f"kernel module {module.path} is built for {module.kernel_release}, "
                f"not {kernel_release}",
                hint="use the modules directory of the kernel you build for",
            )
        for wanted in module.softdep_pre:
            provided = tree.resolve(wanted)
            if provided is None:
                order.missing_softdeps.append(f"{wanted} (wanted by {name})")
            for provider in provided or ():
                visit(provider, soft=True)
        for dep in module.depends:
            visit(dep)
        active.pop()
        done.add(name)
        order.modules.append(module)

    for requested in names:
        provided = tree.resolve(requested)
        if provided is None:
            raise BootkitError(
                f"no kernel module provides {requested!r} in {tree.directory}",
                hint="check the name (modinfo NAME on a running system)",
            )
        if not provided:
            order.builtin.append(requested)
        for provider in provided:
            visit(provider)
    order.optional = {m.name for m in order.modules} - _hard_closure(tree, names)
    return order


def _hard_closure(tree: ModuleTree, names: Sequence[str]) -> set[str]:
    """The requested modules and everything they reach through `depends=`."""
    pending = [p for name in names for p in tree.resolve(name) or ()]
    seen: set[str] = set()
    while pending:
        name = pending.pop()
        if name not in seen:
            seen.add(name)
            pending.extend(tree.module(name).depends)
    return seen
