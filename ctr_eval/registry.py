"""The one plugin registry of the project: encoders, fusion heads and CTR models.

It lives in ctr_eval (pure Python, no dependencies) because ctr_eval must never import
mmembed, while mmembed may import ctr_eval's dependency-light modules.

Usage::

    ENCODERS = Registry("encoder", base=Encoder)

    @ENCODERS.register("sbert")
    class SBertEncoder(Encoder): ...

    ENCODERS.get("sbert")                      # -> SBertEncoder
    ENCODERS.create({"name": "sbert", "batch_size": 8})   # -> SBertEncoder(batch_size=8)
    ENCODERS.get("sbrt")   # UnknownNameError: unknown encoder 'sbrt'. Did you mean 'sbert'? ...

``register(name, **attributes)`` also sets class attributes, e.g. a CTR model registers
with its config class: ``@MODELS.register("din", config_class=DINConfig)``.
"""
from __future__ import annotations

import difflib
import inspect
from typing import Any, Callable, Generic, Iterator, Mapping, TypeVar

T = TypeVar("T")

__all__ = ["Registry", "UnknownNameError"]


class UnknownNameError(ValueError):
    """Raised for a name that is not registered; the message lists the known names."""


class Registry(Generic[T]):
    """Maps names to classes of one kind, e.g. ``Registry("encoder", base=Encoder)``.

    ``base``: when given, only subclasses of it may register, and :meth:`create` passes
    instances of it through unchanged.
    """

    def __init__(self, kind: str, base: type | None = None) -> None:
        self.kind = kind
        self.base = base
        self._entries: dict[str, T] = {}

    # -- registering ------------------------------------------------------------------
    def register(self, name: str | None = None, **attributes: Any) -> Callable[[T], T]:
        """Class decorator registering the class under ``name``.

        Without ``name`` the class attribute ``name`` is used; with it, the class's
        ``name`` attribute is set to it. ``attributes`` are set on the class too.
        Registering a second, different class under a taken name raises ValueError;
        registering the same class again (a module reloaded) is allowed.
        """

        def decorator(cls: T) -> T:
            key = name if name is not None else getattr(cls, "name", None)
            if not isinstance(key, str) or not key:
                raise ValueError(
                    f"cannot register {cls!r} as a {self.kind}: give a non-empty name, "
                    f"either register('my_name') or a class attribute name = 'my_name'"
                )
            if self.base is not None and not (isinstance(cls, type) and issubclass(cls, self.base)):
                raise TypeError(f"a {self.kind} must be a subclass of {self.base.__name__}, got {cls!r}")
            existing = self._entries.get(key)
            if existing is not None and not _same_class(existing, cls):
                raise ValueError(
                    f"{self.kind} name {key!r} is already registered to {existing!r}; "
                    f"choose another name"
                )
            if isinstance(cls, type):
                cls.name = key
                for attr, value in attributes.items():
                    setattr(cls, attr, value)
            elif attributes:
                raise TypeError(f"attributes {sorted(attributes)} can only be set on a class")
            self._entries[key] = cls
            return cls

        return decorator

    # -- looking up ---------------------------------------------------------------------
    def get(self, name: str) -> T:
        """The class registered as ``name``; an unknown name raises UnknownNameError
        listing the known names and, when one is close, the nearest match."""
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

    def create(self, spec: str | Mapping[str, Any] | Any, **kwargs: Any) -> Any:
        """Build an instance from a name, a ``{"name": ..., **params}`` mapping, or pass an
        instance of ``base`` through. ``kwargs`` override the mapping's parameters; an
        unknown parameter raises TypeError naming the valid ones."""
        if self.base is not None and isinstance(spec, self.base):
            if kwargs:
                raise TypeError(f"cannot apply parameters {sorted(kwargs)} to an existing "
                                f"{self.kind} instance {spec!r}")
            return spec
        if isinstance(spec, str):
            name, params = spec, {}
        elif isinstance(spec, Mapping):
            params = dict(spec)
            if "name" not in params:
                raise ValueError(f"{self.kind} spec {dict(spec)!r} has no 'name'; expected "
                                 f"{{'name': ..., **parameters}} with name one of {self.names()}")
            name = params.pop("name")
        else:
            what = f" or an instance of {self.base.__name__}" if self.base is not None else ""
            raise TypeError(f"{self.kind} spec must be a name, a mapping with 'name'{what}; "
                            f"got {type(spec).__name__}")
        cls = self.get(name)
        params.update(kwargs)
        _check_parameters(self.kind, name, cls, params)
        return cls(**params)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self._entries)

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}, names={self.names()})"


def _check_parameters(kind: str, name: str, cls: Any, params: Mapping[str, Any]) -> None:
    """TypeError for parameters ``cls.__init__`` does not take (classes taking ``**options``
    check their own)."""
    signature = inspect.signature(cls.__init__)
    accepted = [p for p in signature.parameters.values() if p.name != "self"]
    if any(p.kind is p.VAR_KEYWORD for p in accepted):
        return
    valid = [p.name for p in accepted if p.kind is not p.VAR_POSITIONAL]
    unknown = sorted(set(params) - set(valid))
    if unknown:
        raise TypeError(f"{kind} {name!r} got unknown parameter(s) {unknown}; valid parameters: {valid}")


def _same_class(a: object, b: object) -> bool:
    # A reloaded module creates a new class object with the same qualified name.
    if a is b:
        return True
    return (
        getattr(a, "__module__", None) == getattr(b, "__module__", None)
        and getattr(a, "__qualname__", None) == getattr(b, "__qualname__", None)
    )
