"""Deployment metadata: `/bootkit/deploy/<os>/deploy/<id>.json` beside the tree it describes."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from bootkit.base.files import atomic_write
from bootkit.contract import check_name, deployment_path
from bootkit.errors import BootkitError
from bootkit.formats import bootvalues


@dataclass(frozen=True)
class Deployment:
    os: str
    id: str
    version: str
    source: str
    kernel_version: str
    payload: str  # "<kver>-<sha256 prefix>" under $BOOT/bootkit/<os>/
    title: str
    created: float
    serial: int
    kargs: tuple[str, ...] = field(default=())
    pinned: bool = False
    # Its payload is one Unified Kernel Image (kernel, initrd and its command line).
    uki: bool = False

    @property
    def ref(self) -> str:
        return f"{self.os}/{self.id}"

    @property
    def path(self) -> str:
        """Its path on the physical root, as `bootkit=` names it."""
        return deployment_path(self.os, self.id)

    def with_changes(self, **changes: Any) -> Deployment:
        return replace(self, **changes)

    def to_json(self) -> str:
        data = asdict(self)
        data["kargs"] = list(self.kargs)
        return json.dumps(data, indent=2) + "\n"

    def save(self, path: Path) -> None:
        atomic_write(path, self.to_json())

    @classmethod
    def load(cls, path: Path) -> Deployment:
        try:
            data = json.loads(path.read_text())
            known = {f.name for f in fields(cls)}
            data = {k: v for k, v in data.items() if k in known}
            if not isinstance(data.get("kargs", []), list):
                raise TypeError(f"kargs must be a list, not {data['kargs']!r}")
            data["kargs"] = tuple(data.get("kargs", ()))
            dep = cls(**data)
        except (OSError, ValueError, TypeError, AttributeError) as err:
            raise BootkitError(
                f"cannot read deployment metadata {path}: {err}",
                hint="restore the file, or remove the deployment with 'bootkit undeploy'",
            ) from None
        try:
            _check_boot_values(dep)
            check_name(dep.os, "os")
            check_name(dep.id, "deployment")
        except BootkitError as err:
            raise BootkitError(
                f"deployment metadata {path}: {err.message}",
                hint="restore the file, or remove the deployment with 'bootkit undeploy'",
            ) from None
        return dep


def _check_boot_values(dep: Deployment) -> None:
    """What a record says that reaches a boot entry: refused here as when it was made."""
    for name in ("os", "id"):
        if not isinstance(getattr(dep, name), str):
            raise BootkitError(f"{name} must be text, not {getattr(dep, name)!r}")
    bootvalues.check_title(dep.title)
    bootvalues.check_version(dep.version)
    bootvalues.check_kernel_version(dep.kernel_version)
    bootvalues.check_word(dep.payload, "payload name")
    for karg in dep.kargs:
        bootvalues.check_kernel_argument(karg)
    for name in ("pinned", "uki"):
        if not isinstance(getattr(dep, name), bool):
            raise BootkitError(f"{name} must be true or false, not {getattr(dep, name)!r}")
    if isinstance(dep.serial, bool) or not isinstance(dep.serial, int) or dep.serial < 0:
        raise BootkitError(f"serial must be a whole number, not {dep.serial!r}")
