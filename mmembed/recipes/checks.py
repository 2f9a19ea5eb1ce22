"""The checks a recipe runs on each table besides the CTR model: neighbours and proxy AUC."""
from __future__ import annotations

import functools
import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np

from ctr_eval.format import find_layout, list_to_matrix, open_parquet, read_item_info, write_json

__all__ = ["run_checks"]

#: neighbour metrics kept in the results (the rest stay in checks/*.json)
KNN_COLUMNS = ("tag_overlap", "coclick_hit", "truth_overlap", "effective_rank", "near_duplicate_share")


def run_checks(ctx: Any, spec: Any, seed: int, table: np.ndarray | None, truth: Any) -> dict:
    """{proxy_auc, knn_* ...} for one table (from ``checks/`` when already computed)."""
    wanted = set(ctx.recipe.checks)
    if not wanted:
        return {}
    table = truth.provided if table is None else table
    key = hashlib.sha256(np.ascontiguousarray(table).tobytes() + repr(sorted(wanted)).encode()).hexdigest()[:16]
    path = ctx.run_dir / "checks" / f"{spec.name}-seed{seed}.json"
    if path.is_file():
        saved = json.loads(path.read_text())
        if saved.get("key") == key:
            return saved["summary"]
    out: dict = {"key": key, "summary": {}}
    if "proxy" in wanted:
        out["summary"]["proxy_auc"] = proxy_auc(ctx.root, table)
    if "knn" in wanted:
        report = knn_report(ctx.root, table, truth)
        out["knn"], out["knn_floor"] = report.metrics, report.floor
        out["knn_examples"] = report.neighbours.index[:20].tolist()
        out["summary"].update({f"knn_{k}": report.metrics[k] for k in KNN_COLUMNS if k in report.metrics})
    write_json(path, out)
    return out["summary"]


def proxy_auc(root: Path, table: np.ndarray) -> float:
    """The history proxy AUC of ``table`` (row i = item i) on the validation rows."""
    from mmembed.knn import history_proxy_auc

    seq, targets, labels = _valid_rows(str(root))
    return history_proxy_auc(table[1:], seq, targets, labels)


@functools.lru_cache(maxsize=4)
def _valid_rows(root: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    path = find_layout(root).valid
    data = open_parquet(path).read(columns=["item_seq", "item_id", "label"])
    seq = list_to_matrix(data.column("item_seq"), path, "item_seq")
    return seq, data.column("item_id").to_numpy(), data.column("label").to_numpy()


def knn_report(root: Path, table: np.ndarray, truth: Any):
    """Neighbour checks with the dataset's tags, train co-clicks and (synthetic) the truth."""
    from mmembed.knn import neighbour_report

    tags, histories = _neighbour_context(str(root))
    latent = None if truth.latent is None else truth.latent[1:]
    return neighbour_report(table[1:], tags=tags, histories=histories, truth=latent)


@functools.lru_cache(maxsize=4)
def _neighbour_context(root: str) -> tuple[np.ndarray, np.ndarray]:
    from mmembed.datasets.histories import load_train_histories

    tags = read_item_info(find_layout(root).item_info, ("item_tags",))["item_tags"][1:]
    return tags, load_train_histories(root).item_seq
