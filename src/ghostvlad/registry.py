"""Name -> component registries, so configs choose components by name instead of if-chains."""
from __future__ import annotations

import inspect
from typing import Any, Callable, Generic, TypeVar

from .schema import ConfigError

T = TypeVar("T")


class Registry(Generic[T]):
    """A named table of factories. ``build`` validates the name and keyword arguments."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._items: dict[str, Callable[..., T]] = {}

    def register(self, name: str) -> Callable[[Callable[..., T]], Callable[..., T]]:
        def add(factory: Callable[..., T]) -> Callable[..., T]:
            if name in self._items:
                raise KeyError(f"{self.kind} {name!r} is already registered")
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

    def build(self, name: str, **kwargs: Any) -> T:
        """Call the factory ``name`` with the keyword arguments it accepts.

        Arguments the factory does not take are dropped, so one flat config can serve
        several components (``clusters`` means nothing to ``tap``).
        """
        factory = self.get(name)
        params = inspect.signature(factory).parameters
        if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
            return factory(**kwargs)
        return factory(**{k: v for k, v in kwargs.items() if k in params})

    def __contains__(self, name: str) -> bool:
        return name in self._items
