"""A run's results: metrics.json and .csv, and the summary table a person reads."""
from __future__ import annotations

import csv
import io
from typing import Any

import numpy as np

from ctr_eval.format import atomic_path, write_json
from mmembed.recipes.compare import Interval, default_baseline, gap_closed, paired_difference

__all__ = ["write_results", "summary_rows", "summary_cells", "spearman_note", "interval_note", "judge_notes",
           "format_summary", "spearman", "baseline_of", "SUMMARY_HEADER"]

_COLUMNS = ("embedding", "model", "seed", "valid_auc", "valid_logloss", "test_auc", "rare_test_auc",
            "rare_test_rows", "proxy_auc", "knn_tag_overlap", "knn_coclick_hit", "knn_truth_overlap",
            "knn_effective_rank", "knn_near_duplicate_share", "fit_seconds", "train_seconds",
            "epochs_run", "best_epoch", "untrained",
            # the row's (model, embedding) comparison, repeated on each of its seeds' lines
            "baseline", "diff_to_baseline", "diff_low", "diff_high", "interval", "verdict",
            "gap_closed", "gap_low", "gap_high", "test_diff_to_baseline", "test_diff_low", "test_diff_high")


def _csv_lines(records: list[dict]) -> list[dict]:
    """The records with their row's paired comparison (see :func:`summary_rows`)."""
    shared_of = {}
    for row in summary_rows(records):
        diff, gap = row["vs_baseline"], row["gap"]
        shared = {"baseline": row["baseline"] or ""}
        if diff is not None:
            shared.update(diff_to_baseline=diff.estimate, diff_low=diff.low, diff_high=diff.high,
                          interval=diff.method_text, verdict=diff.verdict if not row["is_baseline"] else "baseline")
        if gap is not None:
            shared.update(gap_closed=gap.estimate, gap_low=gap.low, gap_high=gap.high)
        test = row["test_vs_baseline"]
        if test is not None:
            shared.update(test_diff_to_baseline=test.estimate, test_diff_low=test.low, test_diff_high=test.high)
        shared_of[row["model"], row["embedding"]] = shared
    return [{**r, **shared_of[r["model"], r["embedding"]]} for r in records]  # run order


def write_results(ctx: Any, records: list[dict]) -> str:
    """Write metrics.json, metrics.csv and summary.md; return the summary text."""
    write_json(ctx.run_dir / "metrics.json", records)
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=_COLUMNS, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    writer.writerows(_csv_lines(records))
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
    """One row per (model, embedding), in the recipe's order, with means over seeds, the
    paired difference to the baseline row (``vs_baseline``, an
    :class:`~mmembed.recipes.compare.Interval`) and the share of the random-to-oracle
    gap closed (``gap``; None with ``gap_reason`` when not shown)."""
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
    baseline = baseline_of(records)
    compared = {r["model"]: r["compare_to"] for r in records if r.get("compare_to")}
    by_key = {(r["model"], r["embedding"]): r for r in rows}
    for row in rows:
        same_model = {r["embedding"]: r["records"] for r in rows if r["model"] == row["model"]}
        row["baseline"] = baseline if baseline in same_model else None
        row["is_baseline"] = row["embedding"] == row["baseline"]
        base_records = same_model[baseline] if row["baseline"] else None
        base_model = by_key.get((compared.get(row["model"]), row["embedding"]))
        if base_model is not None:  # a model compared with another model on the same table
            row["baseline"] = f"{base_model['model']} on {row['embedding']}"
            row["is_baseline"] = False
            base_records = base_model["records"]
        row["vs_baseline"] = None if base_records is None else paired_difference(row["records"], base_records)
        row["test_vs_baseline"] = (None if base_records is None
                                   else paired_difference(row["records"], base_records, key="test_auc"))
        row["gap"], row["gap_reason"] = None, _gap_reason(same_model)
        if row["gap_reason"] is None:
            row["gap"] = gap_closed(row["records"], same_model["random"], same_model["oracle"])
    for model in set(compared.values()):  # the rows other models are compared with
        for row in rows:
            if row["model"] == model and row["baseline"] is None:
                row["is_baseline"] = True
    return rows


def baseline_of(records: list[dict]) -> str | None:
    """The row the others are compared with: what the runner recorded (the recipe's
    ``baseline``), else :func:`~mmembed.recipes.compare.default_baseline`."""
    named = next((r["baseline"] for r in records if r.get("baseline")), None)
    return named or default_baseline(list(dict.fromkeys(r["embedding"] for r in records)))


def _gap_reason(same_model: dict[str, list[dict]]) -> str | None:
    """Why "gap closed" is not shown for a model's rows (None: it is)."""
    if "random" not in same_model or "oracle" not in same_model:
        return "needs the random and oracle rows"
    spread = paired_difference(same_model["oracle"], same_model["random"])
    if spread is None:
        return "the oracle-random difference has no interval"
    if spread.verdict != "better":
        return "the judge did not place the oracle above random"
    return None


#: the columns of the summary table, in order (see :func:`summary_cells`)
SUMMARY_HEADER = ("model", "embedding", "seeds", "valid AUC", "vs baseline (95% CI)", "verdict", "gap closed",
                  "test AUC", "test vs baseline (95% CI)", "rare-item test AUC", "proxy AUC", "tag overlap@10",
                  "co-click hit@10", "fit s", "train s")
#: the first columns, shown even when a run has no figure for them
_ALWAYS_SHOWN = 4


def _signed(interval: Interval, fmt: str) -> str:
    return f"{interval.estimate:{fmt}} [{interval.low:{fmt}}, {interval.high:{fmt}}]"


def summary_cells(row: dict, flag_untrained: bool = True) -> list[str]:
    """The cells of one row of :func:`summary_rows`, as text; "-" where not computed.
    ``flag_untrained`` appends "(random-init encoder)" to the embedding's name."""
    recs = row["records"]
    pick = lambda key: _mean_sd([r.get(key) for r in recs])  # noqa: E731
    if row["is_baseline"]:
        diff, verdict = "baseline", "—"
    elif row["vs_baseline"] is None:
        diff, verdict = "-", "-"
    else:
        diff, verdict = _signed(row["vs_baseline"], "+.4f"), row["vs_baseline"].verdict
    gap = "-" if row["gap"] is None else (
        f"{row['gap'].estimate:.0%} [{row['gap'].low:.0%}, {row['gap'].high:.0%}]")
    test_diff = "baseline" if row["is_baseline"] else (
        "-" if row.get("test_vs_baseline") is None else _signed(row["test_vs_baseline"], "+.4f"))
    name = row["embedding"] + (" (random-init encoder)" if flag_untrained and row["untrained"] else "")
    return [row["model"], name, str(len(recs)), pick("valid_auc"), diff, verdict, gap, pick("test_auc"),
            test_diff, pick("rare_test_auc"), pick("proxy_auc"), pick("knn_tag_overlap"), pick("knn_coclick_hit"),
            f"{row['mean'].get('fit_seconds', 0):.1f}", f"{row['mean'].get('train_seconds', 0):.0f}"]


def summary_table(rows: list[dict], flag_untrained: bool = True) -> tuple[list[str], list[list[str]], list[str]]:
    """(header, cells, dropped) of :func:`summary_rows`, less the columns no row has a
    figure in (after the first four), which ``dropped`` names: a run without checks shows
    no empty check columns."""
    cells = [summary_cells(row, flag_untrained) for row in rows]
    keep = [i for i in range(len(SUMMARY_HEADER))
            if i < _ALWAYS_SHOWN or any(c[i] not in ("-", "baseline", "—") for c in cells)]
    dropped = [name for i, name in enumerate(SUMMARY_HEADER) if i not in keep]
    if all(len(row["records"]) < 2 for row in rows):  # DeLong's covariances pair valid AUCs only
        dropped = [f"{name}: needs 2 or more seeds" if name == "test vs baseline (95% CI)" else name
                   for name in dropped]
    return [SUMMARY_HEADER[i] for i in keep], [[c[i] for i in keep] for c in cells], dropped


def dropped_note(dropped: list[str]) -> str | None:
    """The line under a table from :func:`summary_table` naming the columns it left out."""
    return f"Not computed for any row: {'; '.join(dropped)}" if dropped else None


def interval_note(rows: list[dict]) -> str | None:
    """How the intervals of :func:`summary_rows` were made, for under the table."""
    methods = {row["vs_baseline"].method_text for row in rows if row["vs_baseline"] is not None}
    baselines = sorted({row["baseline"] for row in rows if row["baseline"] and not row["is_baseline"]})
    if not methods:
        return None
    models_by_reason: dict[str, list[str]] = {}
    for row in rows:
        if row["gap_reason"] and row["model"] not in models_by_reason.get(row["gap_reason"], []):
            models_by_reason.setdefault(row["gap_reason"], []).append(row["model"])
    reasons = sorted(f"{', '.join(models)}: {reason}" for reason, models in models_by_reason.items())
    tested = any(row.get("test_vs_baseline") is not None for row in rows)
    return (f"Differences: valid AUC minus that of {', '.join(baselines)} on the same validation rows"
            + (" (test: the same on the test rows)" if tested else "") + ", with "
            f"95% intervals ({'; '.join(sorted(methods))}); a verdict is decided when its interval is clear "
            "of zero" + (f". Gap closed not shown ({'; '.join(reasons)})" if reasons else ""))


def spearman_note(rows: list[dict]) -> str | None:
    """How well the proxy AUC ranks the rows of :func:`summary_rows` like the CTR model (None if < 3)."""
    rho = spearman([r["mean"].get("proxy_auc") for r in rows], [r["mean"].get("valid_auc") for r in rows])
    if rho is None:
        return None
    return (f"Spearman rank correlation of the proxy AUC with the CTR model's valid AUC over "
            f"the {len(rows)} rows: {rho:.2f}")


#: the order a judge must give the reference rows (lower, higher)
REFERENCE_ORDER = (("random", "provided"), ("random", "oracle"), ("provided", "oracle"))


def _order_problem(low: list[dict], high: list[dict], label: str) -> str | None:
    """What is wrong with the judge's order of two reference rows, if anything: the
    difference is reversed or undecided by its interval; without an interval (a run that
    kept no valid scores, one seed) only a reversed mean counts."""
    diff = paired_difference(high, low)
    if diff is not None:
        if diff.verdict == "better":
            return None
        return f"{label} = {_signed(diff, '+.4f')} ({'reversed' if diff.verdict == 'worse' else 'not decided'})"
    sides = [[r["valid_auc"] for r in recs if r.get("valid_auc") is not None] for recs in (high, low)]
    if not all(sides):
        return None
    gap = np.mean(sides[0]) - np.mean(sides[1])
    return None if gap > 0 else f"{label} = {gap:+.4f} (reversed; no interval)"


def judge_notes(rows: list[dict]) -> list[str]:
    """A warning per CTR model that did not order the reference rows of
    :func:`summary_rows` as they must be (random < provided < oracle), each difference
    decided by its paired interval, or that put a row decidedly above the oracle: then
    that model's differences in this run are not a ranking."""
    notes = []
    for model in dict.fromkeys(r["model"] for r in rows):
        recs = {r["embedding"]: r["records"] for r in rows if r["model"] == model}
        problems = []
        for low, high in REFERENCE_ORDER:
            if low in recs and high in recs:
                problem = _order_problem(recs[low], recs[high], f"{high} - {low}")
                problems += [problem] if problem else []
        if "oracle" in recs:
            for name, these in recs.items():
                diff = paired_difference(these, recs["oracle"])
                if name not in ("oracle", "content_oracle") and diff is not None and diff.verdict == "better":
                    problems.append(f"{name} - oracle = {_signed(diff, '+.4f')} (above the oracle)")
        if problems:
            notes.append(f"{model} did not order the reference tables ({'; '.join(problems)}): in this run "
                         "its AUC differences are not a ranking; more training (max_epochs, train_rows) "
                         "or more seeds settle them")
    return notes


def format_summary(records: list[dict]) -> str:
    rows = summary_rows(records)
    header, cells, dropped = summary_table(rows)
    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    lines += ["| " + " | ".join(row_cells) + " |" for row_cells in cells]
    notes = judge_notes(rows) + [note for note in [interval_note(rows), spearman_note(rows),
                                                   dropped_note(dropped)] if note]
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
