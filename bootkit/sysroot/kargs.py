"""`bootkit kargs`: a deployment's kernel arguments, shown and changed.

A deployment has two lists. The image's (`image_kargs`) come from its tree's
kargs.d (`bootkit.sysroot.imageargs`) and change only with a new image; the
admin's (`kargs`) are given at deploy (`--karg`) or here, and carry over to the
next deployment of the OS. The boot entry has root=, bootkit=, the image's, then
the admin's, so where the last value of an argument counts, the admin's wins.

An edit changes the admin's list only, in this order: every `--delete`, then every
`--replace`, then every `--append`.

- `--append ARG` adds ARG at the end unless the list has exactly ARG already, so
  running the same command twice changes nothing; `console=ttyS0` and
  `console=tty0` are different arguments and both stay.
- `--delete ARG` removes every argument equal to ARG; a bare NAME (no `=`) removes
  every argument of that name (`quiet`, `console=...`).
- `--replace NAME=NEW` gives the one argument named NAME the value NEW (refused
  when several have that name); `--replace NAME=OLD=NEW` turns `NAME=OLD` into
  `NAME=NEW` (NEW may hold `=`, OLD may not).

An argument only the image ships cannot be deleted or replaced; the error says so.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from bootkit.boot.entries import options_for
from bootkit.errors import BootkitError
from bootkit.records.deployment import Deployment
from bootkit.sysroot import status, transaction
from bootkit.sysroot.imageargs import KARGS_DIR, argument_name, check_settable
from bootkit.sysroot.layout import Sysroot

log = logging.getLogger("bootkit")

REPLACE_HINT = "use --replace NAME=NEW or --replace NAME=OLD=NEW"


@dataclass(frozen=True)
class KargsEdit:
    """Changes to the admin's kernel arguments, applied deletes, replaces, appends."""

    delete: tuple[str, ...] = ()
    replace: tuple[str, ...] = ()
    append: tuple[str, ...] = ()

    def __bool__(self) -> bool:
        return bool(self.delete or self.replace or self.append)


def edited(dep: Deployment, edit: KargsEdit) -> tuple[str, ...]:
    """The admin's kernel arguments of `dep` after `edit`; each new one checked."""
    kargs = list(dep.kargs)
    for arg in edit.delete:
        kargs = _delete(kargs, arg, dep.image_kargs)
    for spec in edit.replace:
        kargs = _replace(kargs, spec, dep.image_kargs)
    for arg in edit.append:
        check_settable(arg)
        if arg not in kargs:
            kargs.append(arg)
    return tuple(kargs)


def _matches(karg: str, pattern: str) -> bool:
    return karg == pattern if "=" in pattern else argument_name(karg) == pattern


def _not_admins(arg: str, verb: str, image: tuple[str, ...]) -> BootkitError:
    """The error for `arg` that the admin's list lacks: the image's, or nobody's."""
    if any(_matches(k, arg) for k in image):
        return BootkitError(
            f"cannot {verb} {arg!r}: the image ships it ({KARGS_DIR}), it is not the admin's",
            hint="the admin's arguments come after the image's, so '--append NAME=VALUE' "
            "overrides its value; only an image without it drops it",
        )
    return BootkitError(
        f"cannot {verb} {arg!r}: no such kernel argument",
        hint="'bootkit kargs' lists them; '--append' adds one",
    )


def _delete(kargs: list[str], arg: str, image: tuple[str, ...]) -> list[str]:
    kept = [k for k in kargs if not _matches(k, arg)]
    if len(kept) == len(kargs):
        raise _not_admins(arg, "delete", image)
    return kept


def _replace(kargs: list[str], spec: str, image: tuple[str, ...]) -> list[str]:
    name, has_value, rest = spec.partition("=")
    if not has_value or not name or '"' in name:
        raise BootkitError(f"invalid replacement {spec!r}", hint=REPLACE_HINT)
    old, has_old, new = rest.partition("=")
    if has_old:
        wanted = f"{name}={old}"
        result = check_settable(f"{name}={new}")
        hits = [i for i, k in enumerate(kargs) if k == wanted]
    else:
        wanted = name
        result = check_settable(f"{name}={rest}")
        hits = [i for i, k in enumerate(kargs) if argument_name(k) == name]
        if len(hits) > 1:
            raise BootkitError(
                f"cannot replace {name!r}: the admin gave it {len(hits)} times",
                hint=f"name the one to replace: --replace {name}=OLD=NEW",
            )
    if not hits:
        raise _not_admins(wanted, "replace", image)
    return [result if i in hits else k for i, k in enumerate(kargs)]


def chosen(sr: Sysroot, ident: str | None) -> Deployment:
    """Deployment `ident`; without one, the booted deployment, else the default."""
    return status.chosen(sr, ident)


def change_kargs(
    sr: Sysroot, ident: str | None, edit: KargsEdit
) -> tuple[Deployment, Deployment]:
    """Apply `edit` to the admin's kernel arguments of `ident` (see `chosen`) and switch
    the boot configuration to them, as one new generation; the deployment before and
    after (the same when nothing changes, and then nothing is written).

    A UKI deployment is refused: its command line is inside the UKI, signed.
    """
    with sr.locked():
        transaction.repair(sr)
        dep = chosen(sr, ident)
        if dep.uki:
            raise BootkitError(
                f"{dep.ref} boots a Unified Kernel Image, whose command line is built "
                "into it (and signed) at deploy",
                hint="deploy the tree again with 'bootkit deploy --karg ARG' (once per "
                f"argument), or ship the argument in the image's {KARGS_DIR}",
            )
        new = dep.with_changes(kargs=edited(dep, edit))
        if new.kargs == dep.kargs:
            return dep, dep
        options_for(sr.config, new)  # the whole command line, checked before any write
        _switch(sr, dep, new)
        return dep, new


def _switch(sr: Sysroot, old: Deployment, new: Deployment) -> None:
    """Record `new` as the metadata of its deployment and switch $BOOT to it.

    The entries are rendered from the metadata, so the metadata is written first. To
    keep a crash from leaving metadata that $BOOT does not show, the state's
    generation is raised before it, past the one on $BOOT: the next command's repair
    (see `transaction.repair`) then commits whatever metadata it finds, old or new. If
    the switch fails, the old metadata is written back and the generation raised
    again, so that the next command makes $BOOT match the old arguments once more.
    """
    path = sr.metadata_path(new.os, new.id)
    _raise_generation(sr)
    try:
        new.save(path)
        transaction.commit(sr, sr.state())
    except BaseException:
        try:
            old.save(path)
            _raise_generation(sr)
        except OSError as err:
            log.warning("could not restore the old kernel arguments of %s in %s (%s); "
                        "'bootkit fsck --repair' makes its boot entry match what is recorded",
                        old.ref, path, err)
        raise


def _raise_generation(sr: Sysroot) -> None:
    state = sr.state()
    state.with_changes(generation=state.generation + 1).save(sr.state_path)

