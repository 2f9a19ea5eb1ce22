"""mmembed: multimodal item embeddings for recommendation.

The public names are listed here and imported on first use, so `import mmembed` has no
side effects and does not import torch or scikit-learn.
"""
from __future__ import annotations

import importlib

__version__ = "0.1.0.dev0"

_PUBLIC = {
    "extract": "mmembed.api",
    "ItemEmbeddings": "mmembed.api",
    "encode_cached": "mmembed.cache",
    "create_encoder": "mmembed.encoders",
    "list_encoders": "mmembed.encoders",
    "encoder_info": "mmembed.encoders",
    "create_fusion": "mmembed.fusion",
    "list_fusions": "mmembed.fusion",
    "load_fusion": "mmembed.fusion",
    "ItemCatalog": "mmembed.datasets",
    "validate_dataset": "mmembed.datasets",
    "WeightsNotAvailable": "mmembed.weights",
}

__all__ = ["__version__", *_PUBLIC]


def __getattr__(name: str):
    if name in _PUBLIC:
        return getattr(importlib.import_module(_PUBLIC[name]), name)
    raise AttributeError(f"module 'mmembed' has no attribute {name!r}")
