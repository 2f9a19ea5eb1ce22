"""A run's results: metrics.json and .csv, and the summary table a person reads."""
from __future__ import annotations

import csv
import io
from typing import Any

import numpy as np

from ctr_eval.format import atomic_path, write_json

__all__ = ["write_results", "summary_rows", "summary_cells", "spearman_note", "judge_notes", "format_summary",
           "spearman", "SUMMARY_HEADER"]

_COLUMNS = ("embedding", "model", "seed", "valid_auc", "valid_logloss", "test_auc", "rare_test_auc",
            "rare_test_rows", "proxy_auc", "knn_tag_overlap", "knn_coclick_hit", "knn_truth_overlap",
            "knn_effective_rank", "knn_near_duplicate_share", "fit_seconds", "train_seconds",
            "epochs_run", "best_epoch", "untrained")


def write_results(ctx: Any, records: list[dict]) -> str:
    """Write metrics.json, metrics.csv and summary.md; return the summary text."""
    write_json(ctx.run_dir / "metrics.json", records)
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=_COLUMNS, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    writer.writerows(records)
    with atomic_path(ctx.run_dir / "metrics.csv") as tmp:
        tmp.write_text(buffer.getvalue(), encoding="utf-8")
    text = format_summary(records)
    with atomic_path(ctx.run_dir / "summary.md") as tmp:
        tmp.write_text(f"# {ctx.recipe.name}\n\n{text}\n", encoding="utf-8")
    return text


def _mean_sd(values: list[float]) -> str:
    values = [v for v in values if v is not None and np.isfinite(v)]
    if not values:
        return "-"
    if len(values) == 1:
        return f"{values[0]:.4f}"
    return f"{np.mean(values):.4f} ± {np.std(values, ddof=1):.4f}"


def summary_rows(records: list[dict]) -> list[dict]:
    """One row per (model, embedding), in the recipe's order, with means over seeds."""
    groups: dict[tuple[str, str], list[dict]] = {}
    for r in records:
        groups.setdefault((r["model"], r["embedding"]), []).append(r)
    rows = []
    for (model, embedding), recs in groups.items():
        mean = {k: float(np.mean([r[k] for r in recs if r.get(k) is not None]))
                for k in ("valid_auc", "proxy_auc", "fit_seconds", "train_seconds")
                if any(r.get(k) is not None for r in recs)}
        rows.append({"model": model, "embedding": embedding, "seeds": [r["seed"] for r in recs],
                     "records": recs, "mean": mean, "untrained": any(r.get("untrained") for r in recs)})
    for row in rows:
        low = next((r["mean"]["valid_auc"] for r in rows if r["model"] == row["model"] and r["embedding"] == "random"), None)
        high = next((r["mean"]["valid_auc"] for r in rows if r["model"] == row["model"] and r["embedding"] == "oracle"), None)
        row["gap_closed"] = None if low is None or high is None or high == low else \
            (row["mean"]["valid_auc"] - low) / (high - low)
    return rows


#: the columns of the summary table, in order (see :func:`summary_cells`)
SUMMARY_HEADER = ("model", "embedding", "seeds", "valid AUC", "gap closed", "test AUC", "rare-item test AUC",
                  "proxy AUC", "tag overlap@10", "co-click hit@10", "fit s", "train s")


def summary_cells(row: dict, flag_untrained: bool = True) -> list[str]:
    """The cells of one row of :func:`summary_rows`, as text; "-" where not computed.
    ``flag_untrained`` appends "(random-init encoder)" to the embedding's name."""
    recs = row["records"]
    pick = lambda key: _mean_sd([r.get(key) for r in recs])  # noqa: E731
    gap = "-" if row["gap_closed"] is None else f"{row['gap_closed']:.0%}"
    name = row["embedding"] + (" (random-init encoder)" if flag_untrained and row["untrained"] else "")
    return [row["model"], name, str(len(recs)), pick("valid_auc"), gap, pick("test_auc"), pick("rare_test_auc"),
            pick("proxy_auc"), pick("knn_tag_overlap"), pick("knn_coclick_hit"),
            f"{row['mean'].get('fit_seconds', 0):.1f}", f"{row['mean'].get('train_seconds', 0):.0f}"]


def spearman_note(rows: list[dict]) -> str | None:
    """How well the proxy AUC ranks the rows of :func:`summary_rows` like the CTR model (None if < 3)."""
    rho = spearman([r["mean"].get("proxy_auc") for r in rows], [r["mean"].get("valid_auc") for r in rows])
    if rho is None:
        return None
    return (f"Spearman rank correlation of the proxy AUC with the CTR model's valid AUC over "
            f"the {len(rows)} rows: {rho:.2f}")


def judge_notes(rows: list[dict]) -> list[str]:
    """A warning per CTR model whose valid AUCs did not order the reference rows of
    :func:`summary_rows` as they must be (random below provided and below oracle, oracle
    on top): then that model's differences in this run are noise, not a ranking."""
    notes = []
    for model in dict.fromkeys(r["model"] for r in rows):
        auc = {r["embedding"]: r["mean"].get("valid_auc") for r in rows if r["model"] == model}
        auc = {k: v for k, v in auc.items() if v is not None}
        problems = []
        if "random" in auc:
            problems += [f"random {auc['random']:.4f} >= {ref} {auc[ref]:.4f}"
                         for ref in ("provided", "oracle") if ref in auc and auc[ref] <= auc["random"]]
        if "oracle" in auc:
            problems += [f"{name} {value:.4f} > oracle {auc['oracle']:.4f}"
                         for name, value in auc.items() if value > auc["oracle"]]
        if problems:
            notes.append(f"{model} did not order the reference tables ({'; '.join(problems)}): in this run "
                         "its AUC differences are within its noise, not a ranking; more training "
                         "(max_epochs, train_rows) or more seeds settle them")
    return notes


def format_summary(records: list[dict]) -> str:
    rows = summary_rows(records)
    lines = ["| " + " | ".join(SUMMARY_HEADER) + " |", "|" + " --- |" * len(SUMMARY_HEADER)]
    lines += ["| " + " | ".join(summary_cells(row)) + " |" for row in rows]
    notes = judge_notes(rows) + [note for note in [spearman_note(rows)] if note]
    lines += [line for note in notes for line in ("", note)]
    return "\n".join(lines)


def spearman(x: list[float | None], y: list[float | None]) -> float | None:
    """Rank correlation of paired values (pairs with a missing side dropped); None if < 3."""
    pairs = [(a, b) for a, b in zip(x, y) if a is not None and b is not None]
    if len(pairs) < 3:
        return None
    from scipy.stats import spearmanr

    rho = spearmanr([a for a, _ in pairs], [b for _, b in pairs]).statistic
    return None if rho is None or not np.isfinite(rho) else float(rho)
