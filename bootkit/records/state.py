"""The sysroot's state (`/bootkit/state.json`): which deployments exist, which is default.

It is the intent of the last transaction; the boot configuration on $BOOT is made
from it, and a command that finds the two out of step regenerates $BOOT from it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from bootkit.base.files import atomic_write
from bootkit.errors import BootkitError


@dataclass(frozen=True)
class State:
    generation: int = 0
    serial: int = 0
    default: str | None = None  # "<os>/<id>"
    deployments: tuple[str, ...] = field(default=())  # "<os>/<id>", oldest first

    def with_changes(self, **changes: Any) -> State:
        return replace(self, **changes)

    def save(self, path: Path) -> None:
        data = {
            "generation": self.generation,
            "serial": self.serial,
            "default": self.default,
            "deployments": list(self.deployments),
        }
        atomic_write(path, json.dumps(data, indent=2) + "\n")

    @classmethod
    def load(cls, path: Path) -> State:
        try:
            data = json.loads(path.read_text())
            return cls(
                generation=int(data["generation"]),
                serial=int(data["serial"]),
                default=data.get("default"),
                deployments=tuple(data.get("deployments", ())),
            )
        except FileNotFoundError:
            return cls()
        except (OSError, ValueError, KeyError, TypeError) as err:
            raise BootkitError(
                f"cannot read {path}: {err}",
                hint="restore it from a backup; 'bootkit status' lists what is on disk",
            ) from None
