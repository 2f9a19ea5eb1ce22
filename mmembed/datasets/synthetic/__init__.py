"""Synthetic MicroLens-1M data with a known generative truth (see docs/synthetic.md)."""
from __future__ import annotations

from .generate import generate
from .scales import SCALES, SyntheticScale

__all__ = ["generate", "SCALES", "SyntheticScale"]
