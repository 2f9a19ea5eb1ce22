"""Train histories -> (query, key) pairs of feature rows, for heads that learn from behaviour.

Histories are (n, L) arrays of feature rows + 1 (0 = padding), left zero-padded, the most
recent click last. At MicroLens' size they hold about 27M clicks, so everything per click
is int32 (or smaller) and a pass's pairs are drawn in one vectorised step.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from ctr_eval.checks import check_positive_int

_INT32_MAX = np.iinfo(np.int32).max


def check_sequences(sequences: Any, n_items: int, where: str) -> np.ndarray:
    """``sequences`` as an (n, L) int32 array of values in 0..n_items (0 = padding,
    k = feature row k - 1); TypeError / ValueError naming what is wrong."""
    if sequences is None:
        raise ValueError(f"{where} learns from user histories: fit(features, sequences) needs "
                         "sequences, an (n, L) int array (0 = padding, k = feature row k - 1)")
    array = np.asarray(sequences)
    if array.dtype == object or not (np.issubdtype(array.dtype, np.integer) or array.size == 0):
        raise TypeError(f"{where}: sequences must be an integer array, got dtype {array.dtype}")
    if array.ndim != 2:
        raise ValueError(f"{where}: sequences must be 2-D (histories, positions), got shape {array.shape}")
    if array.size and (array.min() < 0 or array.max() > n_items):
        bad = array[(array < 0) | (array > n_items)][0]
        raise ValueError(f"{where}: sequences hold {int(bad)}, outside 0..{n_items} (0 = padding, "
                         f"k = feature row k - 1 of the {n_items} items)")
    return array.astype(np.int32 if n_items <= _INT32_MAX else np.int64, copy=False)


def split_histories(n: int, holdout: float, seed: int) -> np.ndarray:
    """A bool mask of the ``round(holdout * n)`` histories held out (seeded), at least one
    when ``holdout > 0`` and there are two or more histories."""
    count = int(round(holdout * n))
    if holdout > 0 and n >= 2:
        count = min(max(count, 1), n - 1)
    held = np.zeros(n, dtype=bool)
    held[np.random.default_rng([seed, 0x401D]).permutation(n)[:count]] = True
    return held


def window_pairs(sequences: np.ndarray, window: int) -> np.ndarray:
    """Every (m, 2) pair of feature rows of items at most ``window`` positions apart in a
    history (each once, older item first; an item with itself left out)."""
    check_positive_int("window", window)
    out = []
    for gap in range(1, min(window, max(sequences.shape[1] - 1, 0)) + 1):
        first, second = sequences[:, :-gap].ravel(), sequences[:, gap:].ravel()
        keep = (first > 0) & (second > 0) & (first != second)
        out.append(np.stack([first[keep], second[keep]], axis=1).astype(np.int64) - 1)
    return np.concatenate(out) if out else np.zeros((0, 2), np.int64)


class WindowSampler:
    """Each pass, every item of every history as a query, paired with one other position
    of its history at most ``window`` away, drawn uniformly (seeded by the pass).

    A pass costs one pair per click whatever the window, and over passes every pair
    within the window comes up; a wide window pairs items of the same user's taste, a
    narrow one items of the same moment. Draws that land on the same item (a repeated
    click) are dropped. Per click it keeps 14 bytes (history, position, range start and
    width), so MicroLens' 27M clicks cost about 380 MB.
    """

    def __init__(self, sequences: np.ndarray, window: int, seed: int) -> None:
        self.window = check_positive_int("window", window)
        self.seed = seed
        self.sequences = sequences
        width = sequences.shape[1]
        rows, cols = np.nonzero(sequences)  # left zero-padded: a history's clicks are its last ones
        self.rows = rows.astype(np.int32 if len(sequences) <= _INT32_MAX else np.int64)
        self.cols = cols.astype(np.int16 if width < 2**15 else np.int32)
        del rows
        first = width - np.count_nonzero(sequences, axis=1)[self.rows]
        low = np.maximum(first, cols - self.window)
        high = np.minimum(width - 1, cols + self.window)
        del cols, first
        self.low = low.astype(self.cols.dtype)
        self.choices = (high - low).astype(self.cols.dtype)  # positions to pick from, the query's own left out

    def __len__(self) -> int:
        """Pairs per pass, at most."""
        return int(np.count_nonzero(self.choices))

    def __call__(self, epoch: int) -> np.ndarray:
        """The pass's (m, 2) pairs of feature rows, query then key (int32 where the
        sequences are), drawn in chunks of clicks to bound the temporaries."""
        rng = np.random.default_rng([self.seed, epoch, 0x5A])
        parts = []
        for start in range(0, len(self.rows), _CHUNK_CLICKS):
            draw = rng.random(min(_CHUNK_CLICKS, len(self.rows) - start))  # one stream, chunk by chunk
            part = slice(start, start + len(draw))
            ok = np.flatnonzero(self.choices[part] > 0)
            cols = self.cols[part][ok].astype(np.int64)
            partner = self.low[part][ok] + np.floor(draw[ok] * self.choices[part][ok]).astype(np.int64)
            partner += partner >= cols  # skip the query's own position
            rows = self.rows[part][ok]
            pairs = np.stack([self.sequences[rows, cols], self.sequences[rows, partner]], axis=1) - 1
            parts.append(pairs[(pairs[:, 0] != pairs[:, 1]) & (pairs[:, 1] >= 0)])  # key < 0: a gap
        return np.concatenate(parts) if parts else np.zeros((0, 2), self.sequences.dtype)


_CHUNK_CLICKS = 1 << 22


def item_counts(sequences: np.ndarray, n_items: int) -> np.ndarray:
    """How often each feature row occurs in ``sequences`` (int64, (n_items,))."""
    counts = np.zeros(n_items + 1, np.int64)
    for start in range(0, len(sequences), 1 << 16):
        counts += np.bincount(sequences[start: start + (1 << 16)].ravel(), minlength=n_items + 1)
    return counts[1:]


def count_log_q(counts: np.ndarray) -> np.ndarray:
    """Log of each item's sampling frequency as a key, float32: its share of the clicks
    (each click is a query once per pass, and on average a key once). Items never
    clicked get the log of half a click (never keys; the value only keeps it finite)."""
    counts = np.asarray(counts, dtype=np.float64)
    return np.log(np.maximum(counts, 0.5) / max(counts.sum(), 1.0)).astype(np.float32)
