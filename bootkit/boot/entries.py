"""bootkit's BLS entries: one per deployment, common to every bootloader backend.

systemd-boot reads them natively, GRUB through blscfg, and with no bootloader of
bootkit's own they are there for kernel-install style setups. Their file names carry
the entry's class (default, other, bad), its deployment's serial number, the
generation that wrote it and the boot counter (see `bootkit.formats.bls`).
"""

from __future__ import annotations

from bootkit.boot.counting import Counter
from bootkit.boot.payloads import UKI_FILE, Payload
from bootkit.errors import BootkitError
from bootkit.formats import bootvalues
from bootkit.formats.bls import MAX_GENERATION, MAX_SERIAL, BootEntry, EntryName
from bootkit.records.config import SysrootConfig
from bootkit.records.deployment import Deployment


def options_for(cfg: SysrootConfig, dep: Deployment) -> str:
    """The kernel command line that boots `dep`; refused when a reader would take it
    for something else, or the kernel would cut it.

    The image's arguments come before the admin's: where the kernel or a program
    takes the last value of an argument given twice, the admin's wins.
    """
    return bootvalues.check_command_line(
        " ".join([cfg.root_arg, "rw", f"bootkit={dep.path}", *dep.image_kargs, *dep.kargs])
    )


def entry_name(
    dep: Deployment, generation: int, cls: int, counter: Counter | None = None
) -> EntryName:
    counter = counter or Counter()
    tail = bootvalues.check_word(f"{dep.os}-{dep.id}", "boot entry name")
    if not 0 <= dep.serial <= MAX_SERIAL or not 0 <= generation <= MAX_GENERATION:
        raise BootkitError(f"{dep.ref}: serial {dep.serial} or generation {generation} "
                           "does not fit in a boot entry name")
    return EntryName(generation, dep.serial, tail, cls, counter.left, counter.done)


def render_entry(cfg: SysrootConfig, dep: Deployment, name: EntryName) -> BootEntry:
    payload = Payload(dep.os, dep.payload)
    if dep.uki:
        # The same options as embedded in the UKI: systemd-stub uses these only while
        # Secure Boot is off, and `status` finds the entry of a deployment by them.
        return BootEntry(
            title=dep.title,
            version=dep.version,
            sort_key=name.sort_key,
            linux="",
            initrd=(),
            options=options_for(cfg, dep),
            efi=payload.rel(UKI_FILE),
        )
    return BootEntry(
        title=dep.title,
        version=dep.version,
        sort_key=name.sort_key,
        linux=payload.rel("linux"),
        initrd=(payload.rel("initrd"),),
        options=options_for(cfg, dep),
    )
