"""The one error type users see: what went wrong, and what to do next."""

from __future__ import annotations


class BootkitError(Exception):
    """A failure caused by input or machine state, not by a bug in bootkit.

    The CLI prints it as one line on stderr (plus the hint, if any) and exits
    non-zero; anything else that escapes is a bug and keeps its traceback.
    """

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.message if not self.hint else f"{self.message} ({self.hint})"
