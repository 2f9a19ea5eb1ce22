"""Argument checks shared by ctr_eval and mmembed (pure Python, no dependencies).

The error policy of both packages: a wrong type raises TypeError, a wrong value raises
ValueError, and a dataset problem raises :class:`ctr_eval.format.DatasetError` naming the
file, column and row.
"""
from __future__ import annotations

import numbers
from typing import Any

__all__ = ["check_positive_int"]


def check_positive_int(name: str, value: Any, allow_none: bool = False) -> Any:
    """``value`` as an int if it is an integer >= 1 (numpy integers too; None passes when
    ``allow_none``). TypeError for another type (bool included), ValueError for an integer
    below 1. The message names ``name``."""
    if value is None and allow_none:
        return value
    wanted = "a positive integer" + (" or None" if allow_none else "")
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be {wanted}, got {type(value).__name__} {value!r}")
    if value < 1:
        raise ValueError(f"{name} must be {wanted}, got {value}")
    return int(value)
