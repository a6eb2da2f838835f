"""Type checks for configuration read from files (YAML training configs, a model's JSON): a wrong type is one
line naming the key, never a ``TypeError`` deep inside."""
from __future__ import annotations

import dataclasses
import math
import re
import types
import typing
from typing import Any

from .errors import GhostvladError


class ConfigError(GhostvladError):
    """A bad setting: a configuration value of the wrong type, an unknown key, section or component name."""


TYPE_NAMES = {int: "an integer", float: "a number", str: "a string", bool: "true or false", type(None): "null"}


_EXPONENT = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+")


def convert(value: Any, kind: type) -> tuple[bool, Any]:
    """``(ok, value)``: ``value`` as ``kind`` where that is lossless (an int where a float is expected)."""
    if kind is float:
        if isinstance(value, str) and _EXPONENT.fullmatch(value.strip()):  # "1e-3": YAML 1.1 leaves it a string
            value = float(value)
        if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
            return True, float(value)
        return False, value
    if kind is int:
        return isinstance(value, int) and not isinstance(value, bool), value
    return isinstance(value, kind), value


def checked(cls: type, data: Any, where: str) -> dict[str, Any]:
    """The fields of dataclass ``cls`` from mapping ``data``, each checked against its annotation.

    ``where`` prefixes key names in messages (``train`` gives ``train.epochs``). Fields whose annotation is not a
    plain scalar (nested dataclasses) are passed through for the caller to check.
    """
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a mapping of keys to values, got {type(data).__name__} {data!r}")
    hints = typing.get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(map(str, data)) - known)
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
    out = {}
    for key, value in data.items():
        hint = hints[key]
        kinds = typing.get_args(hint) if isinstance(hint, types.UnionType) else (hint,)
        if not all(k in TYPE_NAMES for k in kinds):
            out[key] = value
            continue
        for kind in kinds:
            ok, converted = convert(value, kind)
            if ok:
                out[key] = converted
                break
        else:
            expected = " or ".join(TYPE_NAMES[k] for k in kinds)
            raise ConfigError(f"{where}.{key}: expected {expected}, got {value!r}")
    return out


def differences(first: dict[str, Any], other: dict[str, Any]) -> str:
    """The keys in which ``other`` differs from ``first``, for a one-line message: ``"pooling tstp vs astp; ..."``."""
    return "; ".join(f"{key} {other.get(key)} vs {value}" for key, value in first.items() if other.get(key) != value)
