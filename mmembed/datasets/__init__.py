"""The MicroLens MM-CTR data layer: layout, item catalog, click logs, images, checks.

The synthetic generator lives in :mod:`mmembed.datasets.synthetic`.
"""
from __future__ import annotations

from .catalog import ItemCatalog
from .histories import TrainHistories, load_train_histories
from .interactions import Interactions, UserSequences, load_interactions, load_user_sequences
from ctr_eval.format import DatasetError, DatasetLayout, MissingFileError, find_layout
from .summary import format_summary, summarize
from .validate import Problem, ValidationReport, validate_dataset

__all__ = [
    "DatasetError", "DatasetLayout", "Interactions", "ItemCatalog", "MissingFileError",
    "Problem", "TrainHistories", "UserSequences", "ValidationReport", "find_layout", "format_summary",
    "load_interactions", "load_train_histories", "load_user_sequences", "summarize", "validate_dataset",
]
