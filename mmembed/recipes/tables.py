"""Item embedding tables to compare, and the judge's scores of one.

A table is (N+1, 128) float32 with row i = item i and row 0 zero (what
``ctr_eval.evaluate(item_info=...)`` takes); ``None`` stands for the dataset's own
``item_emb_d128``. Reference tables need no encoder: ``random`` (a Gaussian table with
the provided table's scale: the floor), and on synthetic data ``oracle`` (the generator's
true latent item vectors, randomly projected to 128) and ``content_oracle`` (the same
with the behaviour-only ``collab`` block zeroed: the ceiling for content-only heads).
"""
from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path
from typing import Any, Mapping

import numpy as np

__all__ = ["Truth", "load_truth", "reference_table", "extracted_table", "table_codes", "score_run",
           "RARE_BELOW"]

RARE_BELOW = 5  # a target item seen fewer times than this as a train target is "rare"


@dataclasses.dataclass
class Truth:
    """What scoring and reference tables need from a dataset (oracle parts on synthetic data)."""

    provided: np.ndarray  # (N+1, 128) the dataset's item_emb_d128
    train_target_counts: np.ndarray  # (N+1,) times each item is a train target
    test_targets: np.ndarray  # (test rows,)
    test_labels: np.ndarray | None = None  # synthetic: oracle/test_labels.npy
    latent: np.ndarray | None = None  # synthetic: (N+1, 32) true item vectors
    collab: slice | None = None  # the behaviour-only block of ``latent``

    @property
    def rare_test(self) -> np.ndarray:
        return self.train_target_counts[self.test_targets] < RARE_BELOW


def load_truth(root: str | Path) -> Truth:
    import pyarrow.parquet as pq

    from ctr_eval.format import find_layout, read_item_info

    layout = find_layout(root)
    provided = read_item_info(layout.item_info, ("item_emb_d128",))["item_emb_d128"]
    train_targets = pq.read_table(layout.train, columns=["item_id"]).column("item_id").to_numpy()
    test_targets = (pq.read_table(layout.test, columns=["item_id"]).column("item_id").to_numpy()
                    if layout.has("test") else np.zeros(0, np.int64))
    truth = Truth(provided=provided, train_target_counts=np.bincount(train_targets, minlength=len(provided)),
                  test_targets=test_targets)
    oracle = layout.root / "oracle"
    if (oracle / "item_latent.npy").is_file():
        start, stop = json.loads((oracle / "latent_layout.json").read_text())["blocks"]["collab"]
        truth.test_labels = np.load(oracle / "test_labels.npy")
        truth.latent = np.load(oracle / "item_latent.npy").astype(np.float32)
        truth.collab = slice(start, stop)
    return truth


def _projected(latent: np.ndarray, seed: int, dim: int = 128) -> np.ndarray:
    rng = np.random.default_rng([seed, dim])
    table = latent @ (rng.standard_normal((latent.shape[1], dim)) / np.sqrt(latent.shape[1]))
    table[0] = 0
    return table.astype(np.float32)


def reference_table(name: str, truth: Truth, seed: int) -> np.ndarray | None:
    """The table of a reference row (``provided`` gives None: the dataset's own)."""
    if name == "provided":
        return None
    if name == "random":
        rng = np.random.default_rng([seed, 7])
        table = rng.standard_normal(truth.provided.shape) * truth.provided[1:].std()
        table[0] = 0
        return table.astype(np.float32)
    if name not in ("oracle", "content_oracle"):
        raise ValueError(f"unknown reference table {name!r}; valid: provided, random, oracle, content_oracle")
    if truth.latent is None:
        raise ValueError(f"the {name!r} table needs synthetic data with an oracle/ folder")
    latent = truth.latent.copy()
    if name == "content_oracle":
        latent[:, truth.collab] = 0
    return _projected(latent, seed)


def extracted_table(root: str | Path, encoders: list[Mapping[str, Any]], fusion: Mapping[str, Any] | None,
                    dim: int, seed: int, cache_dir: str | Path, progress: bool = False,
                    checkpoint_dir: str | Path | None = None) -> tuple[np.ndarray, dict, np.ndarray | None]:
    """(N+1, dim) table from ``mmembed.extract``, its provenance, with the fusion's
    wall time (features read from the cache) under ``provenance["fit_seconds"]``, and the
    head's semantic-ID codes by item id ((N+1, levels), row 0 -1) when it makes them. A head
    that takes a ``seed`` parameter gets ``seed`` unless its spec sets one; one that takes
    a ``checkpoint_dir`` gets ``checkpoint_dir`` (a killed fit resumes there; removed once
    the table is made)."""
    import shutil

    import mmembed
    from mmembed.fusion import FUSIONS

    spec = dict(fusion) if fusion else None
    params = FUSIONS.get(spec["name"]).param_names() if spec is not None else []
    if "seed" in params:
        spec.setdefault("seed", seed)
    if "checkpoint_dir" in params and checkpoint_dir is not None:
        spec.setdefault("checkpoint_dir", str(checkpoint_dir))
    mmembed.extract(root, encoders=list(encoders), fusion=None, dim=None, cache_dir=cache_dir,
                    progress=progress)  # the features, into the cache (a no-op when there)
    started = time.perf_counter()
    emb = mmembed.extract(root, encoders=list(encoders), fusion=spec, dim=dim if spec else None,
                          cache_dir=cache_dir, progress=progress)
    seconds = time.perf_counter() - started
    if checkpoint_dir is not None:
        shutil.rmtree(checkpoint_dir, ignore_errors=True)
    table = np.zeros((int(emb.ids.max()) + 1, emb.dim), dtype=np.float32)
    table[emb.ids] = emb.vectors
    codes = None
    if emb.codes is not None:
        codes = np.full((len(table), emb.codes.shape[1]), -1, dtype=np.int64)
        codes[emb.ids] = emb.codes
    return table, {**emb.provenance, "fit_seconds": seconds}, codes


def table_codes(table: np.ndarray, params: Mapping[str, Any], seed: int) -> tuple[np.ndarray, dict]:
    """Semantic IDs of a table's items: ((N+1, levels) codes by item id, row 0 -1; the
    quantizer's diagnostics), from the ``rq`` head fitted on rows 1..N with ``params``
    (its ``seed`` defaults to ``seed``)."""
    from mmembed.fusion import create_fusion

    head = create_fusion({"name": "rq", "dim": min(128, table.shape[1]), "seed": seed, **params})
    head.fit({"table": table[1:]})
    codes = np.full((len(table), head.levels), -1, dtype=np.int64)
    codes[1:] = head.codes_
    return codes, head.diagnostics()


def score_run(run_dir: str | Path, root: str | Path, truth: Truth, progress: bool = False,
              task: str = "Task1") -> dict:
    """Test-set figures of a finished ``ctr_eval`` run: AUC against the oracle labels, and
    on rows whose target is rare in train. Empty when the data has no test labels. The
    run's ``test/submission.zip`` is written on the way, its column named ``task``."""
    if truth.test_labels is None or not len(truth.test_targets):
        return {}
    import ctr_eval
    from ctr_eval.submission import read_submission

    zip_path = ctr_eval.predict(run_dir, root, task=task, out_dir=Path(run_dir) / "test", split="test",
                                progress=progress)
    _, scores = read_submission(zip_path)
    labels, rare = truth.test_labels, truth.rare_test
    out = {"test_auc": ctr_eval.auc(labels, scores), "rare_test_rows": int(rare.sum())}
    if rare.any() and 0 < labels[rare].sum() < rare.sum():
        out["rare_test_auc"] = ctr_eval.auc(labels[rare], scores[rare])
    return out
