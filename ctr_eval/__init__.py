"""ctr_eval: the MM-CTR challenge's fixed DIN evaluator and a TransAct+DCNv2 model.

Reads the challenge's files (or an (N+1, 128) float32 embedding table); never imports
mmembed.

    import ctr_eval
    result = ctr_eval.evaluate("data/", item_info="my_item_info.parquet", run_dir="runs/mine")
    result["valid_auc"], result["valid_logloss"]
    ctr_eval.predict(result["run_dir"], "data/", task="Task1")  # -> submission.zip

The public names are loaded on first use, so ``import ctr_eval`` itself stays cheap.
"""
from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0.dev0"

# public name -> module that defines it
_PUBLIC = {
    "evaluate": "ctr_eval.api",
    "predict": "ctr_eval.api",
    "load_run": "ctr_eval.api",
    "list_models": "ctr_eval.models",
    "build_model": "ctr_eval.models",
    "resolve_config": "ctr_eval.config",
    "config_hash": "ctr_eval.config",
    "TASK1_TUNABLE": "ctr_eval.config",
    "load_item_table": "ctr_eval.data",
    "load_split": "ctr_eval.data",
    "auc": "ctr_eval.metrics",
    "logloss": "ctr_eval.metrics",
    "write_submission": "ctr_eval.submission",
    "read_submission": "ctr_eval.submission",
    "default_cpu_threads": "ctr_eval._runtime",
}

__all__ = ["__version__", *_PUBLIC]


def __getattr__(name: str) -> Any:
    module = _PUBLIC.get(name)
    if module is None:
        raise AttributeError(f"module 'ctr_eval' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
