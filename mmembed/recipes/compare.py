"""Paired comparisons of a recipe's rows: differences with 95% intervals and a verdict.

Rows judged by the same CTR model with the same seed saw the same training rows and are
scored on the same validation rows, so they are compared pair by pair:

- one seed: DeLong's covariance of the correlated validation AUCs
  (:func:`ctr_eval.metrics.delong`, stored per record by the runner as
  ``valid_auc_cov``) gives a normal 95% interval. It covers the validation set's noise
  only: a second training seed can move a row by more;
- several seeds: the per-seed paired differences give a Student-t 95% interval over
  seeds, which covers training and evaluation noise together.

A difference is *decided* when its interval is clear of zero. "Gap closed" (a row's
place between the random and oracle tables) gets an interval the same way (the delta
method for one seed) and is given only when the judge ordered the references.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterable, Sequence

import numpy as np

__all__ = ["Interval", "paired_difference", "gap_closed", "default_baseline", "covariances",
           "Z95"]

Z95 = 1.959963984540054  # the normal distribution's 97.5% quantile


@dataclass(frozen=True)
class Interval:
    """An estimate with its 95% interval and how the interval was made."""

    estimate: float
    low: float
    high: float
    method: str  # "DeLong" (one seed, evaluation noise only) or "seeds" (t over seeds)
    seeds: int

    @property
    def verdict(self) -> str:
        """"better" / "worse" when the interval is clear of zero, else "undecided"."""
        if self.low > 0:
            return "better"
        if self.high < 0:
            return "worse"
        return "undecided"

    @property
    def method_text(self) -> str:
        if self.method == "DeLong":
            return "DeLong, one seed: evaluation noise only"
        return f"t over {self.seeds} seeds"


def default_baseline(embeddings: Sequence[str]) -> str | None:
    """The row others are compared with when a recipe names none: the official recipe
    (``concat_pca``) when present, else the dataset's provided table, else None."""
    for name in ("concat_pca", "provided"):
        if name in embeddings:
            return name
    return None


def _by_seed(records: Iterable[dict], key: str = "valid_auc") -> dict[int, dict]:
    return {r["seed"]: r for r in records if r.get(key) is not None}


def _t_interval(values: list[float], seeds: int) -> Interval:
    from scipy.stats import t

    mean = float(np.mean(values))
    half = float(t.ppf(0.975, len(values) - 1) * np.std(values, ddof=1) / math.sqrt(len(values)))
    return Interval(mean, mean - half, mean + half, "seeds", seeds)


def _normal_interval(estimate: float, variance: float) -> Interval:
    half = Z95 * math.sqrt(max(variance, 0.0))
    return Interval(estimate, estimate - half, estimate + half, "DeLong", 1)


def _cov(record: dict, other: str) -> float | None:
    value = (record.get("valid_auc_cov") or {}).get(other)
    return None if value is None else float(value)


def paired_difference(rows: Sequence[dict], base: Sequence[dict], key: str = "valid_auc") -> Interval | None:
    """``key`` (valid AUC by default) of ``rows`` minus that of ``base`` (the seeds both
    have); None when they share no seed, or share one seed without DeLong covariances
    (always so for two models, whose rows the covariances do not pair, and for any key but
    valid AUC, the only one they are kept for)."""
    a, b = _by_seed(rows, key), _by_seed(base, key)
    seeds = sorted(set(a) & set(b))
    if len(seeds) >= 2:
        return _t_interval([a[s][key] - b[s][key] for s in seeds], len(seeds))
    if not seeds or key != "valid_auc":
        return None
    ra, rb = a[seeds[0]], b[seeds[0]]
    if ra.get("model") != rb.get("model"):
        return None  # DeLong's covariances pair tables judged by one model, not two models
    if ra["embedding"] == rb["embedding"]:
        return Interval(0.0, 0.0, 0.0, "DeLong", 1)
    terms = [_cov(ra, ra["embedding"]), _cov(rb, rb["embedding"]), _cov(ra, rb["embedding"])]
    if any(v is None for v in terms):
        return None
    return _normal_interval(ra["valid_auc"] - rb["valid_auc"], terms[0] + terms[1] - 2 * terms[2])


def gap_closed(rows: Sequence[dict], random: Sequence[dict], oracle: Sequence[dict]) -> Interval | None:
    """(row - random) / (oracle - random) of valid AUC, with its interval: over seeds
    (per-seed ratios), or for one seed by the delta method on DeLong's covariance."""
    a, r, o = _by_seed(rows), _by_seed(random), _by_seed(oracle)
    seeds = sorted(set(a) & set(r) & set(o))
    ratios = [(a[s]["valid_auc"] - r[s]["valid_auc"]) / (o[s]["valid_auc"] - r[s]["valid_auc"])
              for s in seeds if o[s]["valid_auc"] != r[s]["valid_auc"]]
    if len(seeds) >= 2 and len(ratios) == len(seeds):
        return _t_interval(ratios, len(seeds))
    if len(seeds) != 1 or not ratios:
        return None
    recs = [a[seeds[0]], r[seeds[0]], o[seeds[0]]]
    names = [x["embedding"] for x in recs]
    cells = [[_cov(x, n) for n in names] for x in recs]
    if any(v is None for row in cells for v in row):
        return None
    cov = np.array(cells, dtype=np.float64)
    va, vr, vo = (x["valid_auc"] for x in recs)
    span = vo - vr
    # gradient of (va - vr) / (vo - vr) with respect to (va, vr, vo)
    grad = np.array([1 / span, (va - vo) / span**2, -(va - vr) / span**2])
    return _normal_interval(ratios[0], float(grad @ cov @ grad))


def covariances(embeddings: Sequence[str], labels: np.ndarray, scores: Sequence[np.ndarray]) -> dict[str, dict[str, float]]:
    """DeLong's covariance of the valid AUCs of tables judged on the same rows:
    ``{embedding: {other: cov}}`` (what the runner stores as each record's ``valid_auc_cov``)."""
    from ctr_eval.metrics import delong

    _, cov = delong(labels, np.stack(scores))
    return {a: {b: float(cov[i, j]) for j, b in enumerate(embeddings)} for i, a in enumerate(embeddings)}
