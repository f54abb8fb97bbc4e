"""Reading a record's JSON: each value of the type its field declares, or one clear error.

The records are bootkit's own files, but a disk error, an editor or a hostile image
builder may have changed them; a value of the wrong type must stop a command with
a message that names the file and the field, never with a traceback later on.
"""

from __future__ import annotations

import dataclasses
import functools
import types
import typing
from pathlib import Path
from typing import Any

from bootkit.errors import BootkitError

# What a message calls the values of each plain type.
_WORDS: dict[type, str] = {
    bool: "true or false",
    int: "a whole number",
    float: "a number",
    str: "text",
    type(None): "null",
}


def typed_fields(cls: type, data: object, path: Path, hint: str | None = None) -> dict[str, Any]:
    """The values in `data` (a JSON object) that the dataclass `cls` has fields for,
    checked against each field's type and converted (a list becomes a tuple, an
    object a nested record). Unknown keys are left out: newer records still load."""
    if not isinstance(data, dict):
        raise BootkitError(f"{path}: not a JSON object", hint=hint)
    hints = _hints(cls)
    out: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        if f.name not in data:
            continue
        value = data[f.name]
        if not conforms(value, hints[f.name]):
            shown = repr(value)
            shown = shown if len(shown) <= 40 else shown[:37] + "..."
            raise BootkitError(
                f"{path}: {f.name!r} must be {describe(hints[f.name])}, not {shown}", hint=hint
            )
        out[f.name] = _convert(value, hints[f.name])
    return out


@functools.cache
def _hints(cls: type) -> dict[str, Any]:
    # Resolving the annotations evaluates them anew on every call, and a record's
    # annotations never change: a sysroot with many deployments loads one per file.
    return typing.get_type_hints(cls)


@functools.cache
def _shape(hint: Any) -> tuple[str, tuple[Any, ...]]:
    """("union", members), ("tuple", (item,)), ("record", ()) or ("plain", ()): what
    `conforms` and `_convert` ask of a hint, worked out once per hint."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        return "union", typing.get_args(hint)
    if origin is tuple:
        return "tuple", typing.get_args(hint)[:1]
    if dataclasses.is_dataclass(hint) and isinstance(hint, type):
        return "record", ()
    return "plain", ()


def conforms(value: object, hint: Any) -> bool:
    """Whether the JSON `value` can stand for a value of type `hint`."""
    if hint is str:  # most fields: answered before the slower look at the hint
        return isinstance(value, str)
    kind, args = _shape(hint)
    if kind == "union":
        return any(conforms(value, arg) for arg in args)
    if kind == "tuple":
        return isinstance(value, list) and all(conforms(v, args[0]) for v in value)
    if kind == "record":
        return isinstance(value, dict) and _record_conforms(value, hint)
    if hint is bool or hint is type(None):
        return isinstance(value, hint)
    if hint is float:
        return isinstance(value, int | float) and not isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    # str, and StrEnums stored by their value.
    return isinstance(hint, type) and issubclass(hint, str) and isinstance(value, str)


def describe(hint: Any) -> str:
    """How a message names the values of type `hint`."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(describe(arg) for arg in typing.get_args(hint))
    if origin is tuple:
        return f"a list of {describe(typing.get_args(hint)[0])}"
    if dataclasses.is_dataclass(hint):
        return "an object"
    if isinstance(hint, type):
        return next((w for t, w in _WORDS.items() if issubclass(hint, t)), hint.__name__)
    return str(hint)


def _record_conforms(value: dict[str, Any], cls: Any) -> bool:
    hints = _hints(cls)
    for f in dataclasses.fields(cls):
        required = f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        if f.name not in value:
            if required:
                return False
        elif not conforms(value[f.name], hints[f.name]):
            return False
    return True


def _convert(value: Any, hint: Any) -> Any:
    if hint is str:
        return value
    kind, args = _shape(hint)
    if kind == "union":
        arg = next(a for a in args if conforms(value, a))
        return _convert(value, arg)
    if kind == "tuple":
        return tuple(_convert(v, args[0]) for v in value)
    if kind == "record":
        hints = _hints(hint)
        names = {f.name for f in dataclasses.fields(hint)}
        return hint(**{k: _convert(v, hints[k]) for k, v in value.items() if k in names})
    if hint is float:
        return float(value)
    return value
