"""Argument checks shared by ctr_eval and mmembed (pure Python, no dependencies).

The error policy of both packages: a wrong type raises TypeError, a wrong value raises
ValueError, and a dataset problem raises :class:`ctr_eval.format.DatasetError` naming the
file, column and row.
"""
from __future__ import annotations

import numbers
from typing import Any

__all__ = ["check_positive_int", "positive_int_arg"]


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


def positive_int_arg(text: str) -> int:
    """An argparse ``type=``: the flag's text as an integer >= 1, else a usage error."""
    import argparse

    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text!r}")
    return value
