"""What `bootkit fsck` found, and what it did about it."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any


class Kind(StrEnum):
    """The kinds of problem, as `bootkit fsck --json` names them."""

    STATE = "state"  # state.json missing, unreadable, or not what the disk holds
    METADATA = "metadata"  # a deployment's metadata missing or unreadable
    TREE = "tree"  # a deployment's tree missing
    UNEXPLAINED = "unexplained"  # something in bootkit's directories that nothing explains
    LEFTOVER = "leftover"  # what an interrupted command left
    PAYLOAD = "payload"  # a boot file on $BOOT missing or changed
    ENTRIES = "entries"  # the boot entries on $BOOT are not the state's
    OBJECT = "object"  # a stored object changed since it was stored
    SHARED_OUTSIDE_USR = "shared-outside-usr"  # a file outside usr/ is a stored object
    UNUSED_OBJECTS = "unused-objects"  # stored objects no deployment uses


@dataclass
class Problem:
    kind: Kind
    subject: str  # what it is about: a ref, a path, a payload, an object
    message: str
    repaired: str | None = None  # what --repair did about it
    hint: str | None = None  # what is left to do, when --repair did not (fully) fix it

    def to_json(self) -> dict[str, Any]:
        return {
            "kind": str(self.kind),
            "subject": self.subject,
            "message": self.message,
            "repaired": self.repaired is not None,
            "action": self.repaired,
            "hint": self.hint,
        }


@dataclass
class Report:
    repair: bool
    problems: list[Problem] = field(default_factory=list)
    checked: dict[str, int] = field(default_factory=dict)

    def add(self, kind: Kind, subject: str, message: str, hint: str | None = None) -> Problem:
        problem = Problem(kind, subject, message, hint=hint)
        self.problems.append(problem)
        return problem

    @property
    def unrepaired(self) -> list[Problem]:
        return [p for p in self.problems if p.repaired is None or p.hint is not None]

    @property
    def exit_code(self) -> int:
        """0 clean, 1 problems found (and, with --repair, repaired as far as possible)."""
        return 1 if self.problems else 0

    def to_json(self) -> dict[str, Any]:
        return {
            "repair": self.repair,
            "clean": not self.problems,
            "checked": dict(self.checked),
            "problems": [p.to_json() for p in self.problems],
            "unrepaired": len(self.unrepaired),
        }
