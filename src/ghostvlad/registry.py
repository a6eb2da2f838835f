"""Name -> component registries: configs choose components by name, each with its own parameters.

A registry is one *slot* (backbone, pooling, head, optimiser, ...). Its factories declare their parameters in
their signatures: the ``context`` ones are supplied by the code that builds the slot (a pooling's input size),
the others come from the config. :meth:`Registry.build` refuses an argument a factory does not take, naming it,
and a product that is not of the slot's ``base`` type.
"""
from __future__ import annotations

import inspect
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Callable, Generic, TypeVar

from .schema import TYPE_NAMES, ConfigError, convert

T = TypeVar("T")

_EMPTY = inspect.Parameter.empty


@dataclass(frozen=True)
class Param:
    """One config parameter of a component: its name, default (``None`` with ``required``) and type."""

    name: str
    default: Any = None
    required: bool = False
    annotation: str = ""


@dataclass(frozen=True)
class Choice:
    """One registered component: its name, the first paragraph of its docstring and its config parameters."""

    name: str
    summary: str
    params: tuple[Param, ...] = ()


@dataclass(frozen=True)
class Component:
    """A chosen component and its config arguments: ``{name: gvlad, clusters: 8, ghost_clusters: 2}``."""

    name: str
    args: Mapping[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, **self.args}

    def __hash__(self) -> int:
        return hash((self.name, tuple(sorted(self.args.items()))))


class Registry(Generic[T]):
    """A named table of factories for one slot.

    ``base``: the type every product must have (checked by :meth:`build`). ``context``: the parameters the
    builder supplies (every factory must take them); the rest of a factory's parameters are its config.
    """

    def __init__(self, kind: str, base: type | None = None, context: tuple[str, ...] = ()) -> None:
        self.kind, self.base, self.context = kind, base, context
        self._items: dict[str, Callable[..., T]] = {}

    def register(self, name: str) -> Callable[[Callable[..., T]], Callable[..., T]]:
        def add(factory: Callable[..., T]) -> Callable[..., T]:
            if name in self._items:
                raise KeyError(f"{self.kind} {name!r} is already registered")
            params = inspect.signature(factory).parameters
            missing = [c for c in self.context if c not in params]
            if missing:
                raise TypeError(f"{self.kind} {name!r} must take {', '.join(missing)}")
            self._items[name] = factory
            return factory

        return add

    def names(self) -> list[str]:
        return sorted(self._items)

    def get(self, name: str) -> Callable[..., T]:
        try:
            return self._items[name]
        except KeyError:
            raise ConfigError(f"unknown {self.kind} {name!r}; choose one of: {', '.join(self.names())}") from None

    def params(self, name: str) -> tuple[Param, ...]:
        """The config parameters of ``name`` (its signature less the context), with their defaults."""
        return tuple(
            Param(p.name, None if p.default is _EMPTY else p.default, p.default is _EMPTY, _annotation(p))
            for p in inspect.signature(self.get(name)).parameters.values()
            if p.name not in self.context and p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)
        )

    def resolve(self, name: str, args: Mapping[str, Any] | None = None) -> Component:
        """``name`` with its config ``args`` checked and every default filled in (:class:`ConfigError` for an
        argument it does not take, or one it needs and is not given)."""
        args = dict(args or {})
        params = {p.name: p for p in self.params(name)}
        self._refuse(name, [k for k in args if k not in params])
        missing = [p.name for p in params.values() if p.required and p.name not in args]
        if missing:
            raise ConfigError(f"{self.kind} {name!r} needs: {', '.join(missing)}")
        hints = _hints(self.get(name))
        for key, value in args.items():
            kinds = typing.get_args(hints[key]) if isinstance(hints.get(key), types.UnionType) else (hints.get(key),)
            if not all(k in TYPE_NAMES for k in kinds):
                continue
            for kind in kinds:
                ok, args[key] = convert(value, kind)
                if ok:
                    break
            else:
                raise ConfigError(f"{self.kind} {name!r}: {key} expected {' or '.join(TYPE_NAMES[k] for k in kinds)}, "
                                  f"got {value!r}")
        return Component(name, {k: args.get(k, p.default) for k, p in params.items()})

    def build(self, name: str, /, **kwargs: Any) -> T:
        """Call the factory ``name`` with ``kwargs`` (context and config); an argument it does not take is a
        :class:`ConfigError` naming it, a product that is not a ``base`` a ``TypeError``."""
        factory = self.get(name)
        params = inspect.signature(factory).parameters
        if not any(p.kind is p.VAR_KEYWORD for p in params.values()):
            self._refuse(name, [k for k in kwargs if k not in params])
        product = factory(**kwargs)
        if self.base is not None and not isinstance(product, self.base):
            raise TypeError(f"{self.kind} {name!r} built a {type(product).__name__}, not a {self.base.__name__}")
        return product

    def describe(self) -> list[Choice]:
        """Every choice with the first paragraph of its docstring and its config parameters, by name."""
        return [Choice(n, " ".join((inspect.getdoc(self._items[n]) or "").split("\n\n")[0].split()), self.params(n))
                for n in self.names()]

    def _refuse(self, name: str, unknown: list[str]) -> None:
        if unknown:
            takes = ", ".join(p.name for p in self.params(name)) or "nothing"
            raise ConfigError(f"{self.kind} {name!r} does not take: {', '.join(unknown)} (it takes: {takes})")

    def __contains__(self, name: str) -> bool:
        return name in self._items


def _hints(factory: Callable) -> dict[str, Any]:
    try:
        return typing.get_type_hints(factory)
    except Exception:  # noqa: BLE001 - an annotation that does not resolve is not checked
        return {}


def _annotation(p: inspect.Parameter) -> str:
    a = p.annotation
    if a is _EMPTY:
        return ""
    return a if isinstance(a, str) else getattr(a, "__name__", str(a))
