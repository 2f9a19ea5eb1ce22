"""Fusion heads: per-encoder item features -> one item vector, registered by name.

    create_fusion("concat_pca", dim=128)
    create_fusion({"name": "concat_pca", "dim": 64, "normalize": False})
    list_fusions()                      # -> ["concat_pca", ...]
    load_fusion(folder)                 # a head saved with head.save(folder)

A new head is one file with a ``FusionHead`` subclass decorated by
``@register_fusion("my_head")`` and an import line at the bottom of this module.
"""
from __future__ import annotations

from typing import Any, Mapping

from mmembed._registry import Registry
from mmembed.fusion.base import FusionHead, as_blocks

FUSIONS: Registry = Registry("fusion head")

__all__ = [
    "FusionHead",
    "FUSIONS",
    "as_blocks",
    "create_fusion",
    "get_fusion",
    "list_fusions",
    "load_fusion",
    "register_fusion",
]


def register_fusion(name: str):
    """Class decorator: register a FusionHead subclass under ``name``."""

    def decorator(cls):
        cls.name = name
        return FUSIONS.register(name)(cls)

    return decorator


def get_fusion(name: str) -> type[FusionHead]:
    """The class registered as ``name``; unknown names list the known ones."""
    return FUSIONS.get(name)


def list_fusions() -> list[str]:
    return FUSIONS.names()


def create_fusion(spec: str | Mapping[str, Any] | FusionHead, **params: Any) -> FusionHead:
    """Build a head from a name, a ``{"name": ..., **params}`` dict, or pass one through.

    Unknown parameters raise TypeError naming the valid ones.
    """
    if isinstance(spec, FusionHead):
        if params:
            raise TypeError(f"create_fusion got an instance ({spec!r}) and extra parameters {sorted(params)}")
        return spec
    if isinstance(spec, Mapping):
        spec = dict(spec)
        if "name" not in spec:
            raise ValueError(f"a fusion spec dict needs a 'name' key (one of {list_fusions()}), got {spec}")
        name = spec.pop("name")
        params = {**spec, **params}
    elif isinstance(spec, str):
        name = spec
    else:
        raise TypeError(
            f"fusion must be a name, a dict with 'name', or a FusionHead, got {type(spec).__name__}"
        )
    cls = get_fusion(name)
    valid = cls._param_names()
    unknown = sorted(set(params) - set(valid))
    if unknown:
        raise TypeError(f"fusion {name!r} got unknown parameter(s) {unknown}; valid parameters: {valid}")
    return cls(**params)


def load_fusion(directory) -> FusionHead:
    """Load any registered head saved with ``FusionHead.save(directory)``."""
    return FusionHead.load(directory)


# Built-in heads register themselves on import.
from mmembed.fusion import concat_pca as _concat_pca  # noqa: E402,F401
