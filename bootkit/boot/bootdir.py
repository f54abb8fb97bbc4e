"""$BOOT as the sysroot layer sees it: one object for reading, switching and marking good."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

from bootkit.boot import switch
from bootkit.boot.backends import Backend, Generation, backend_for
from bootkit.boot.counting import Counter, entry_counters
from bootkit.boot.switch import BootView
from bootkit.contract import bootkit_arg
from bootkit.formats.bls import ENTRIES_DIR
from bootkit.records.config import SysrootConfig
from bootkit.records.deployment import Deployment
from bootkit.secureboot.signing import Signer


class BootDir:
    """$BOOT as bootkit manages it, for one sysroot configuration."""

    def __init__(self, path: Path, config: SysrootConfig, backend: Backend | None = None) -> None:
        self.path = path
        self.config = config
        self.backend = backend or backend_for(config.bootloader)

    def view(self) -> BootView:
        """Entries, unreadable entries, generations, the backend's menu and stray files."""
        return switch.read_view(self.path, self.backend)

    def counters(self, view: BootView | None = None) -> dict[str, Counter]:
        """Every deployment's boot counter (by deployment path) as $BOOT holds it now."""
        view = view or self.view()
        return self.backend.count_tries(self.path, entry_counters(view.entries))

    def entry_names(self, view: BootView | None = None) -> dict[str, str]:
        """Deployment path -> the file name of its entry (the one that sorts first)."""
        view = view or self.view()
        newest: dict[str, tuple[tuple[int, ...], str]] = {}
        for fname, entry in view.entries:
            path = bootkit_arg(entry.options)
            name = view.names.get(fname)
            if path and name and (path not in newest or name.precedence > newest[path][0]):
                newest[path] = (name.precedence, fname)
        return {path: fname for path, (_, fname) in newest.items()}

    def switch(
        self,
        ordered: Sequence[Deployment],
        generation: int,
        counters: Mapping[str, Counter],
        before: BootView | None = None,
    ) -> None:
        """Make `ordered` (default first) the menu; entries written now get generation
        `generation`; `counters` by deployment ref; `before`: the view read earlier in
        the same transaction."""
        new = Generation(self.config, ordered, generation, counters)
        switch.switch(self.path, self.backend, new, before)

    def holds(
        self,
        view: BootView,
        ordered: Sequence[Deployment],
        generation: int,
        counters: Mapping[str, Counter],
    ) -> bool:
        """Whether $BOOT, as `view` read it, already is exactly what `switch` would make
        of the same arguments: then nothing needs writing."""
        new = Generation(self.config, ordered, generation, counters)
        return switch.holds(self.path, self.backend, view, new)

    def needs_writes(
        self,
        view: BootView,
        ordered: Sequence[Deployment],
        generation: int,
        counters: Mapping[str, Counter],
    ) -> bool:
        """Whether `switch` would write any file, rather than only remove some."""
        new = Generation(self.config, ordered, generation, counters)
        planned = switch.plan(view, new)
        return switch.needs_writes(self.path, self.backend, view, new, planned)

    def is_current(self, view: BootView, generation: int) -> bool:
        return switch.is_current(view, generation, self.backend)

    def mark_good(self, dep: Deployment) -> list[str]:
        """Stop counting `dep`'s boots: what changed, as short descriptions."""
        return switch.mark_good(self.path, self.backend, dep)

    def has_configuration(self) -> bool:
        """Whether bootkit's files are here: false when $BOOT is not mounted, say."""
        return any((self.path / d).is_dir() for d in (ENTRIES_DIR, "bootkit"))

    def install_bootloader(self, signer: Signer | None) -> Path:
        """Put the bootloader's binary on $BOOT, an ESP; where it went."""
        return self.backend.install(self.path, signer)
