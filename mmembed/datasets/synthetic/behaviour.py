"""Click timelines and CTR rows, simulated for one chunk of users at a time.

Each user has a preference vector u. A user's clicks happen at sorted random times in
[start, 1). At each click the user is shown ``N_CANDIDATES`` items drawn by popularity
(only items already released at that time) and clicks one of them with probability
``softmax(u.v / CLICK_TEMPERATURE + popularity_bias)`` (Gumbel-max). A CTR row is one such
impression: (user, the last L earlier clicks, target, label), where the target is the
clicked item (label 1) or a shown-but-skipped item (label 0), so negatives have nearly
the popularity distribution of positives. Train rows come from impressions before
``TRAIN_END``, valid/test rows from impressions after it.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .latent import STAGE_BEHAVIOUR, TRAIN_END, ItemTruth, rng_for
from .scales import SyntheticScale

CLICK_TEMPERATURE = 0.45
N_CANDIDATES = 16  # shown items per impression (the last one from the launch catalogue)
POSITIVE_RATE = 0.25
CLICKS_SIGMA = 0.9  # log-normal spread of the number of clicks per user
EVENT_BATCH = 20_000  # impressions scored together (bounds memory)


class PopularityTable:
    """Draw item indices with probability proportional to popularity in O(1) each."""

    def __init__(self, popularity: np.ndarray, mask: np.ndarray | None = None):
        p = popularity if mask is None else np.where(mask, popularity, 0.0)
        cdf = np.cumsum(p / p.sum())
        size = max(1 << 20, 16 * len(p))
        quantiles = (np.arange(size) + 0.5) / size
        self.table = np.minimum(np.searchsorted(cdf, quantiles), len(p) - 1).astype(np.int32)

    def draw(self, rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
        return self.table[rng.integers(0, len(self.table), shape)]


@dataclass
class SplitRows:
    """CTR rows of one split for one chunk (item ids 1-based, histories left-padded)."""

    user_id: np.ndarray
    item_seq: np.ndarray  # (R, L) int64
    item_id: np.ndarray
    label: np.ndarray

    def __len__(self) -> int:
        return len(self.item_id)


@dataclass
class ChunkResult:
    rows: dict[str, SplitRows]  # "train", "valid", "test"
    user_ids: np.ndarray  # (n,) int64
    user_history: np.ndarray  # (n, L) int64: clicks before TRAIN_END, left-padded


def allocate(total: int, start: int, stop: int, n_users: int) -> int:
    """Rows of a chunk of users [start, stop): proportional, summing exactly to ``total``."""
    return total * stop // n_users - total * start // n_users


@dataclass
class _Timeline:
    """Click events of a chunk of users: grouped by user, sorted by time inside each user."""

    event_user: np.ndarray  # (E,) chunk-local user index of each event
    starts: np.ndarray  # (n,) index of each user's first event
    times: np.ndarray  # (E,) event times in [0, 1)

    def __len__(self) -> int:
        return len(self.times)


def _histories(clicks: np.ndarray, first_event: np.ndarray, events: np.ndarray,
               seq_len: int) -> np.ndarray:
    """Last ``seq_len`` clicks strictly before each event, left-padded with 0."""
    idx = events[:, None] - seq_len + np.arange(seq_len)[None, :]
    valid = idx >= first_event[:, None]
    out = np.where(valid, clicks[np.maximum(idx, 0)], 0)
    return out.astype(np.int64)


def _timeline(rng: np.random.Generator, n: int, scale: SyntheticScale) -> _Timeline:
    """Draw each user's number of clicks and their sorted times in [start, 1)."""
    n_clicks = np.exp(np.log(scale.median_clicks) + CLICKS_SIGMA * rng.standard_normal(n))
    n_clicks = np.clip(n_clicks.astype(np.int64), scale.min_clicks, scale.max_clicks)
    ends = np.cumsum(n_clicks)
    starts = ends - n_clicks
    n_events = int(ends[-1])
    event_user = np.repeat(np.arange(n), n_clicks)
    start_time = rng.uniform(0.0, 0.8, n)
    times = start_time[event_user] + (1.0 - start_time[event_user]) * rng.random(n_events)
    times = times[np.lexsort((times, event_user))]  # sorted inside each user's block
    return _Timeline(event_user=event_user, starts=starts, times=times)


def _choose_row_events(rng: np.random.Generator, timeline: _Timeline,
                       row_counts: dict[str, int], scale: SyntheticScale,
                       chunk: int) -> tuple[np.ndarray, np.ndarray]:
    """Pick the impressions that become rows: sorted train events, then sorted eval events.

    Needs only times and positions, so it runs before any impression is simulated.
    """
    position = np.arange(len(timeline)) - timeline.starts[timeline.event_user]
    has_history = position >= 1
    pools = {"train": np.flatnonzero(has_history & (timeline.times < TRAIN_END)),
             "eval": np.flatnonzero(has_history & (timeline.times >= TRAIN_END))}
    wanted = {"train": row_counts["train"], "eval": row_counts["valid"] + row_counts["test"]}
    chosen = {}
    for pool, need in wanted.items():
        if need > len(pools[pool]):
            raise ValueError(
                f"scale {scale.name!r}: chunk {chunk} has {len(pools[pool])} {pool} impressions "
                f"with a history but needs {need} rows; raise median_clicks or n_users"
            )
        chosen[pool] = np.sort(rng.choice(pools[pool], need, replace=False))
    return chosen["train"], chosen["eval"]


def _impressions(rng: np.random.Generator, items: ItemTruth,
                 tables: tuple[PopularityTable, PopularityTable], u: np.ndarray,
                 times: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Candidates by popularity, choice by softmax of the preference score (Gumbel-max).

    Returns the 0-based candidates (m, N_CANDIDATES), which of them were released at the
    event time, and the column of the clicked one.
    """
    all_table, launch_table = tables
    m = len(times)
    cand = np.concatenate([all_table.draw(rng, (m, N_CANDIDATES - 1)),
                           launch_table.draw(rng, (m, 1))], axis=1)
    # np.take is several times faster than fancy indexing for these row gathers.
    vectors = np.take(items.latent, cand, axis=0)
    score = (np.einsum("mkd,md->mk", vectors, u) / CLICK_TEMPERATURE
             + np.take(items.pop_bias, cand))
    available = np.take(items.release_time, cand) <= times[:, None]
    noisy = np.where(available, score + rng.gumbel(size=score.shape), -np.inf)
    winner = np.argmax(noisy, axis=1)
    return cand, available, winner


def _skipped_items(rng: np.random.Generator, cand: np.ndarray, available: np.ndarray,
                   winner: np.ndarray, launch_table: PopularityTable) -> np.ndarray:
    """A skipped item (0-based) for each row impression: a random other available candidate."""
    rows = np.arange(len(cand))
    ok = available & (cand != cand[rows, winner][:, None])
    key = np.where(ok, rng.random(cand.shape), -1.0)
    pick = np.argmax(key, axis=1)
    fallback = ~ok.any(axis=1)  # every other candidate was the winner or unreleased
    lose = cand[rows, pick]
    lose[fallback] = launch_table.draw(rng, (int(fallback.sum()),))
    return lose


def _simulate_clicks(rng: np.random.Generator, items: ItemTruth,
                     tables: tuple[PopularityTable, PopularityTable], users: np.ndarray,
                     timeline: _Timeline, row_events: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Simulate every impression in batches of ``EVENT_BATCH``; return the clicked item of
    each event and a skipped item for each row event (both 1-based)."""
    n_events = len(timeline)
    is_row = np.full(n_events, -1, dtype=np.int64)
    is_row[row_events] = np.arange(len(row_events))
    loser = np.zeros(len(row_events), dtype=np.int64)
    clicks = np.empty(n_events, dtype=np.int64)
    for s in range(0, n_events, EVENT_BATCH):
        e = slice(s, min(s + EVENT_BATCH, n_events))
        u = np.take(users, timeline.event_user[e], axis=0)
        cand, available, winner = _impressions(rng, items, tables, u, timeline.times[e])
        clicks[e] = cand[np.arange(len(cand)), winner] + 1
        rows_here = np.flatnonzero(is_row[e] >= 0)
        if len(rows_here):
            lose = _skipped_items(rng, cand[rows_here], available[rows_here],
                                  winner[rows_here], tables[1])
            loser[is_row[e.start + rows_here]] = lose + 1
    return clicks, loser


def _assign_splits(rng: np.random.Generator, n_rows: int, n_train: int,
                   n_test: int) -> np.ndarray:
    """Split code of each row: 0 = train (the first ``n_train``), 1 = valid, 2 = test."""
    split_of_row = np.empty(n_rows, dtype=np.int8)
    split_of_row[:n_train] = 0
    eval_split = np.zeros(n_rows - n_train, dtype=np.int8)
    eval_split[rng.permutation(len(eval_split))[:n_test]] = 1
    split_of_row[n_train:] = 1 + eval_split  # 1 = valid, 2 = test
    return split_of_row


def _split_rows(rng: np.random.Generator, timeline: _Timeline, row_events: np.ndarray,
                n_train: int, clicks: np.ndarray, loser: np.ndarray,
                row_counts: dict[str, int], positive_counts: dict[str, int],
                first_user_id: int, seq_len: int) -> dict[str, SplitRows]:
    """Cut the row events into shuffled train/valid/test rows with their labels and targets."""
    history = _histories(clicks, timeline.starts[timeline.event_user[row_events]], row_events,
                         seq_len)
    target_click = clicks[row_events]
    split_of_row = _assign_splits(rng, len(row_events), n_train, row_counts["test"])
    rows: dict[str, SplitRows] = {}
    for code, name in enumerate(("train", "valid", "test")):
        idx = np.flatnonzero(split_of_row == code)
        idx = idx[rng.permutation(len(idx))]  # rows in random order inside the chunk
        label = np.zeros(len(idx), dtype=np.int64)
        label[: positive_counts[name]] = 1
        label = label[rng.permutation(len(idx))]
        target = np.where(label == 1, target_click[idx], loser[idx])
        rows[name] = SplitRows(
            user_id=(first_user_id + timeline.event_user[row_events[idx]]).astype(np.int64),
            item_seq=history[idx], item_id=target.astype(np.int64), label=label,
        )
    return rows


def _pre_split_histories(clicks: np.ndarray, timeline: _Timeline, n: int,
                         seq_len: int) -> np.ndarray:
    """For item_seq.parquet: each user's clicks before the train/eval split, last L."""
    n_train_clicks = np.bincount(timeline.event_user, weights=timeline.times < TRAIN_END,
                                 minlength=n)
    after_last = timeline.starts + n_train_clicks.astype(np.int64)
    return _histories(clicks, timeline.starts, after_last, seq_len)


def simulate_chunk(items: ItemTruth, tables: tuple[PopularityTable, PopularityTable],
                   users: np.ndarray, first_user_id: int, row_counts: dict[str, int],
                   positive_counts: dict[str, int], scale: SyntheticScale, seed: int,
                   chunk: int) -> ChunkResult:
    """Simulate the timelines of ``users`` and cut ``row_counts`` CTR rows from them,
    ``positive_counts`` of which (per split) are clicks."""
    rng = rng_for(seed, STAGE_BEHAVIOUR, chunk)
    n = users.shape[0]
    timeline = _timeline(rng, n, scale)
    train_events, eval_events = _choose_row_events(rng, timeline, row_counts, scale, chunk)
    row_events = np.concatenate([train_events, eval_events])
    clicks, loser = _simulate_clicks(rng, items, tables, users, timeline, row_events)
    rows = _split_rows(rng, timeline, row_events, len(train_events), clicks, loser,
                       row_counts, positive_counts, first_user_id, scale.seq_len)
    user_history = _pre_split_histories(clicks, timeline, n, scale.seq_len)
    user_ids = np.arange(first_user_id, first_user_id + n, dtype=np.int64)
    return ChunkResult(rows=rows, user_ids=user_ids, user_history=user_history)
