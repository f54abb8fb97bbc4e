"""The sysroot's state (`/bootkit/state.json`): which deployments exist, which is default.

It is the intent of the last transaction; the boot configuration on $BOOT is made
from it, and a command that finds the two out of step regenerates $BOOT from it.
When it is lost, it can be rebuilt from what is on disk (see
`bootkit.sysroot.inventory`); nothing is ever removed on the strength of a state
that is missing or cannot be read.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from bootkit.base.files import atomic_write
from bootkit.contract import is_valid_name
from bootkit.errors import BootkitError
from bootkit.formats.bls import MAX_GENERATION
from bootkit.records.jsonfields import typed_fields

# What to do about a state file that cannot be read: rebuild it from the disk.
REBUILD_HINT = "'bootkit fsck --repair' rebuilds it from the deployments on disk"


@dataclass(frozen=True)
class State:
    generation: int = 0
    serial: int = 0
    default: str | None = None  # "<os>/<id>"
    deployments: tuple[str, ...] = field(default=())  # "<os>/<id>", oldest first
    # Deployments a command is adding or removing. While `deployments` does not list
    # one, its tree and metadata are what an interrupted deploy or undeploy left,
    # and may go (see `bootkit.sysroot.leftovers`).
    in_flight: tuple[str, ...] = field(default=())

    def with_changes(self, **changes: Any) -> State:
        return replace(self, **changes)

    def save(self, path: Path) -> None:
        data = asdict(self)
        data["deployments"] = list(self.deployments)
        data["in_flight"] = list(self.in_flight)
        atomic_write(path, json.dumps(data, indent=2) + "\n")

    @classmethod
    def load(cls, path: Path) -> State | None:
        """The recorded state; None when there is no state file."""
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as err:
            raise BootkitError(f"cannot read {path}: {err}", hint=REBUILD_HINT) from None
        state = cls(**typed_fields(cls, data, path, REBUILD_HINT))
        if not isinstance(data, dict) or not {"generation", "serial"} <= data.keys():
            raise BootkitError(f"{path}: missing 'generation' or 'serial'", hint=REBUILD_HINT)
        for ref in (*state.deployments, *state.in_flight, *filter(None, [state.default])):
            if not is_ref(ref):
                raise BootkitError(f"{path}: {ref!r} is not <os>/<id>", hint=REBUILD_HINT)
        # Both are written into entry names on $BOOT, in fixed-width fields.
        if not 0 <= state.generation < MAX_GENERATION or state.serial < 0:
            raise BootkitError(
                f"{path}: generation {state.generation} or serial {state.serial} is out of range",
                hint=REBUILD_HINT,
            )
        if len(set(state.deployments)) != len(state.deployments):
            raise BootkitError(f"{path}: a deployment is listed twice", hint=REBUILD_HINT)
        return state


def is_ref(ref: str) -> bool:
    """Whether `ref` is `<os>/<id>` with two valid names."""
    os_name, sep, dep_id = ref.partition("/")
    return bool(sep) and is_valid_name(os_name) and is_valid_name(dep_id)
