"""A small decorator registry shared by encoders, fusion heads and recipes.

Usage::

    ENCODERS = Registry("encoder")

    @ENCODERS.register("sbert")
    class SBertEncoder(Encoder): ...

    ENCODERS.get("sbert")      # -> SBertEncoder
    ENCODERS.get("sbrt")       # -> UnknownNameError: ... did you mean 'sbert'? ...
"""
from __future__ import annotations

import difflib
from typing import Callable, Generic, Iterator, TypeVar

T = TypeVar("T")

__all__ = ["Registry", "UnknownNameError"]


class UnknownNameError(ValueError):
    """Raised for a name that is not registered; the message lists the known names."""


class Registry(Generic[T]):
    """Maps names to classes (or factories) of one kind, e.g. ``Registry("encoder")``."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, T] = {}

    def register(self, name: str | None = None) -> Callable[[T], T]:
        """Class decorator registering the class under ``name``.

        Without ``name`` the class attribute ``name`` is used. Registering a second,
        different object under a taken name raises ValueError; registering the same
        object again (a module reloaded) is allowed.
        """

        def decorator(obj: T) -> T:
            key = name if name is not None else getattr(obj, "name", None)
            if not isinstance(key, str) or not key:
                raise ValueError(
                    f"cannot register {obj!r} as a {self.kind}: give a non-empty name, "
                    f"either register('my_name') or a class attribute name = 'my_name'"
                )
            existing = self._entries.get(key)
            if existing is not None and not _same_object(existing, obj):
                raise ValueError(
                    f"{self.kind} name {key!r} is already registered to {existing!r}; "
                    f"choose another name"
                )
            self._entries[key] = obj
            return obj

        return decorator

    def get(self, name: str) -> T:
        """Return the entry registered as ``name``.

        An unknown name raises UnknownNameError listing the known names and, when one
        is close, the nearest match.
        """
        if not isinstance(name, str):
            raise TypeError(f"{self.kind} name must be a str, got {type(name).__name__}: {name!r}")
        try:
            return self._entries[name]
        except KeyError:
            raise UnknownNameError(self.unknown_message(name)) from None

    def unknown_message(self, name: str) -> str:
        known = self.names()
        close = difflib.get_close_matches(name, known, n=1, cutoff=0.5)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        listing = ", ".join(known) if known else "(none registered)"
        return f"unknown {self.kind} {name!r}.{hint} Known {self.kind}s: {listing}"

    def names(self) -> list[str]:
        """Registered names, sorted."""
        return sorted(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self._entries)

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}, names={self.names()})"


def _same_object(a: object, b: object) -> bool:
    # A reloaded module creates a new class object with the same qualified name.
    if a is b:
        return True
    return (
        getattr(a, "__module__", None) == getattr(b, "__module__", None)
        and getattr(a, "__qualname__", None) == getattr(b, "__qualname__", None)
    )
