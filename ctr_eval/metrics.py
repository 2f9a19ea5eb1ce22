"""Exact AUC (ties get average ranks), clipped logloss, and DeLong's covariance of
correlated AUCs, in float64 numpy.

FuxiCTR scores validation with ``sklearn.metrics.roc_auc_score`` and ``log_loss`` on
float64 arrays (``fuxictr.metrics.evaluate_metrics``); these agree with them.
"""
from __future__ import annotations

import numpy as np

__all__ = ["auc", "logloss", "delong"]


def _as_labels_and_scores(y_true, y_score, score_name: str) -> tuple[np.ndarray, np.ndarray]:
    y = np.asarray(y_true, dtype=np.float64).reshape(-1)
    s = np.asarray(y_score, dtype=np.float64).reshape(-1)
    if y.shape != s.shape:
        raise ValueError(f"y_true has {y.size} values but {score_name} has {s.size}")
    if y.size == 0:
        raise ValueError("cannot score an empty set")
    bad = ~((y == 0) | (y == 1))
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        raise ValueError(f"labels must be 0 or 1; row {row} has {float(y[row])!r}")
    if not np.isfinite(s).all():
        row = int(np.flatnonzero(~np.isfinite(s))[0])
        raise ValueError(f"{score_name} must be finite; row {row} has {float(s[row])!r}")
    return y, s


def _average_ranks(values: np.ndarray) -> np.ndarray:
    """1-based ranks with tied values sharing the mean of their ranks."""
    order = np.argsort(values, kind="mergesort")
    sorted_vals = values[order]
    # start index of each run of equal values
    starts = np.flatnonzero(np.r_[True, sorted_vals[1:] != sorted_vals[:-1]])
    ends = np.r_[starts[1:], sorted_vals.size]  # exclusive
    run_rank = (starts + 1 + ends) / 2.0  # mean of ranks starts+1 .. ends
    run_id = np.repeat(np.arange(starts.size), ends - starts)
    ranks = np.empty(values.size, dtype=np.float64)
    ranks[order] = run_rank[run_id]
    return ranks


def auc(y_true, y_score) -> float:
    """Area under the ROC curve, exact with ties (Mann-Whitney U with average ranks)."""
    y, s = _as_labels_and_scores(y_true, y_score, "y_score")
    n_pos = float(y.sum())
    n_neg = float(y.size) - n_pos
    if n_pos == 0 or n_neg == 0:
        raise ValueError("AUC is undefined when only one class is present in y_true")
    ranks = _average_ranks(s)
    rank_sum = float(ranks[y == 1].sum())
    return (rank_sum - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg)


def logloss(y_true, y_pred, eps: float = 1e-7) -> float:
    """Mean binary cross-entropy of probabilities clipped to [eps, 1 - eps].

    Note: recent scikit-learn (which FuxiCTR calls) clips at the float64 machine
    epsilon instead; the two agree unless a prediction is within 1e-7 of 0 or 1.
    """
    if not 0 < eps < 0.5:
        raise ValueError(f"eps must be in (0, 0.5), got {eps}")
    y, p = _as_labels_and_scores(y_true, y_pred, "y_pred")
    if ((p < 0) | (p > 1)).any():
        row = int(np.flatnonzero((p < 0) | (p > 1))[0])
        raise ValueError(f"y_pred must be probabilities in [0, 1]; row {row} has {float(p[row])!r}")
    p = np.clip(p, eps, 1.0 - eps)
    return float(-np.mean(y * np.log(p) + (1.0 - y) * np.log1p(-p)))


def delong(y_true, scores) -> tuple[np.ndarray, np.ndarray]:
    """AUCs of several scorings of the same rows and their covariance matrix (DeLong,
    DeLong & Clarke-Pearson 1988), in the O(k n log n) form of Sun & Xu (2014).

    ``scores``: (k, n), one row per scoring of the n rows of ``y_true``. Returns
    ``(aucs (k,), cov (k, k))``. The covariance is that of the AUCs over draws of the
    evaluated rows (positives and negatives resampled independently): it covers the
    evaluation set's noise only, not the training's. The variance of ``aucs[a] - aucs[b]``
    is ``cov[a, a] + cov[b, b] - 2 cov[a, b]``.
    """
    s = np.atleast_2d(np.asarray(scores, dtype=np.float64))
    y, _ = _as_labels_and_scores(y_true, s[0], "scores[0]")
    for row in s[1:]:
        _as_labels_and_scores(y_true, row, "scores")
    pos, neg = y == 1, y == 0
    m, n = int(pos.sum()), int(neg.sum())
    if m < 2 or n < 2:
        raise ValueError(f"DeLong's covariance needs at least 2 positives and 2 negatives; got {m} and {n}")
    k = s.shape[0]
    v10 = np.empty((k, m))  # per positive: share of negatives it outranks (ties count half)
    v01 = np.empty((k, n))  # per negative: share of positives that outrank it
    for i in range(k):
        all_ranks = _average_ranks(s[i])
        pos_ranks, neg_ranks = _average_ranks(s[i][pos]), _average_ranks(s[i][neg])
        v10[i] = (all_ranks[pos] - pos_ranks) / n
        v01[i] = 1.0 - (all_ranks[neg] - neg_ranks) / m
    aucs = v10.mean(axis=1)
    cov = np.atleast_2d(np.cov(v10)) / m + np.atleast_2d(np.cov(v01)) / n
    return aucs, cov
