"""Click logs of a MicroLens dataset as numpy arrays.

``train/valid/test.parquet`` rows and ``item_seq.parquet`` users are read by pyarrow
batches straight into preallocated arrays: list columns become (n, L) matrices, no
per-row Python objects, and peak memory stays near the size of the result.
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa

from ctr_eval.checks import check_positive_int
from ctr_eval.format import (SPLITS, DatasetError, MissingFileError, check_columns, find_layout,
                             list_to_matrix, open_parquet, scalar_to_numpy)

logger = logging.getLogger(__name__)

BATCH_ROWS = 131_072
SPLIT_COLUMNS = {
    "user_id": "int", "item_seq": "int_list", "likes_level": "int", "views_level": "int",
    "item_id": "int",
}


@dataclass
class Interactions:
    """Rows of one split. ``item_seq`` is (n, L), left zero-padded, most recent item last;
    ``label`` is None for the test split."""

    split: str
    path: Path
    user_id: np.ndarray
    item_seq: np.ndarray
    likes_level: np.ndarray
    views_level: np.ndarray
    item_id: np.ndarray
    label: np.ndarray | None

    def __len__(self) -> int:
        return len(self.item_id)

    @property
    def seq_len(self) -> int:
        return int(self.item_seq.shape[1])


@dataclass
class UserSequences:
    """``item_seq.parquet``: each user's full history, (n_users, L), left zero-padded."""

    path: Path
    user_id: np.ndarray
    item_seq: np.ndarray

    def __len__(self) -> int:
        return len(self.user_id)

    @property
    def seq_len(self) -> int:
        return int(self.item_seq.shape[1])


def _check_max_len(max_len: int | None) -> None:
    check_positive_int("max_len", max_len, allow_none=True)


def _read_arrays(path: Path, expected: dict[str, str], seq_column: str,
                 max_len: int | None) -> dict[str, np.ndarray]:
    """Read ``expected`` columns of ``path`` by batches; the list column ``seq_column``
    keeps its last ``max_len`` positions (all when None)."""
    pf = open_parquet(path)
    check_columns(path, pf.schema_arrow, expected)
    n = pf.metadata.num_rows
    out: dict[str, np.ndarray] = {c: np.empty(n, np.int64) for c in expected if c != seq_column}
    seq: np.ndarray | None = None
    width: int | None = None
    start = 0
    try:
        batches = pf.iter_batches(batch_size=BATCH_ROWS, columns=list(expected))
        for batch in batches:
            stop = start + batch.num_rows
            for column in out:
                out[column][start:stop] = scalar_to_numpy(batch.column(column), path, column, start)
            matrix = list_to_matrix(batch.column(seq_column), path, seq_column, width, start)
            if seq is None:
                width = matrix.shape[1]
                keep = width if max_len is None else min(width, max_len)
                seq = np.empty((n, keep), np.int64)
            seq[start:stop] = matrix[:, matrix.shape[1] - seq.shape[1]:]
            start = stop
    except (pa.ArrowException, OSError) as err:
        raise DatasetError(f"{path}: cannot read rows from {start} on "
                           f"(truncated or corrupt file?): {err}") from err
    if start != n:
        raise DatasetError(f"{path}: metadata says {n} rows but {start} were read")
    out[seq_column] = seq if seq is not None else np.zeros((0, max_len or 0), np.int64)
    return out


def load_interactions(data_dir: str | os.PathLike, split: str,
                      max_len: int | None = None) -> Interactions:
    """Load ``train``, ``valid`` or ``test`` of the dataset at ``data_dir``.

    ``max_len`` keeps only the most recent ``max_len`` history positions (the challenge
    baseline uses 64), which also bounds memory. ``label`` is read when the file has it
    (train/valid must; test usually has none).
    """
    if split not in SPLITS:
        raise ValueError(f"split must be one of {', '.join(SPLITS)}, got {split!r}")
    _check_max_len(max_len)
    path = find_layout(data_dir).require(split)
    expected = dict(SPLIT_COLUMNS)
    has_label = open_parquet(path).schema_arrow.get_field_index("label") >= 0
    if split != "test" and not has_label:
        raise DatasetError(f"{path}: column 'label': missing column (expected type int64; "
                           f"the {split} split needs labels 0/1)")
    if has_label:
        expected["label"] = "int"
    arrays = _read_arrays(path, expected, "item_seq", max_len)
    logger.info("loaded %s: %d rows, history length %d", path, len(arrays["item_id"]),
                arrays["item_seq"].shape[1])
    return Interactions(split=split, path=path, user_id=arrays["user_id"],
                        item_seq=arrays["item_seq"], likes_level=arrays["likes_level"],
                        views_level=arrays["views_level"], item_id=arrays["item_id"],
                        label=arrays.get("label"))


def load_user_sequences(data_dir: str | os.PathLike,
                        max_len: int | None = None) -> UserSequences:
    """Load ``item_seq.parquet`` (user_id, full history) of the dataset at ``data_dir``."""
    _check_max_len(max_len)
    path = find_layout(data_dir).require("item_seq")
    arrays = _read_arrays(path, {"user_id": "int", "item_seq": "int_list"}, "item_seq", max_len)
    logger.info("loaded %s: %d users, history length %d", path, len(arrays["user_id"]),
                arrays["item_seq"].shape[1])
    return UserSequences(path=path, user_id=arrays["user_id"], item_seq=arrays["item_seq"])


@dataclass
class TrainHistories:
    """Distinct train-period histories of a dataset, for heads that learn from behaviour.

    ``item_seq`` is (n, L), left zero-padded, most recent item last (item ids, not rows);
    ``user_id`` (n,) says whose each one is. ``sources`` are the files read (train.parquet
    and item_seq.parquet, never valid or test) and ``rows_read`` their rows in all.
    """

    user_id: np.ndarray
    item_seq: np.ndarray
    sources: tuple[Path, ...]
    rows_read: int

    def __len__(self) -> int:
        return len(self.user_id)


HISTORY_COLUMNS = {"user_id": "int", "item_seq": "int_list"}


def load_train_histories(data_dir: str | os.PathLike, max_len: int | None = None) -> TrainHistories:
    """The train-period histories of the dataset at ``data_dir``, each kept once.

    Reads the ``item_seq`` column of ``MicroLens_1M_x1/train.parquet`` and
    ``item_seq.parquet`` (whichever exist; at least one must). Both hold windows of each
    user's clicks before the train/eval split, and the same window recurs: every train
    row of a user repeats the user's history (MicroLens), or its history so far (the
    synthetic set, where row k's history extends row k-1's). So per user the histories
    are compared oldest-first and one that equals another, or is the start of a longer
    one, is dropped: what is left are the longest distinct windows. Windows cut to L
    at different times overlap without either containing the other; both stay.
    Empty histories are dropped. valid.parquet and test.parquet are never opened.
    """
    _check_max_len(max_len)
    layout = find_layout(data_dir)
    paths = tuple(p for p in (layout.train, layout.item_seq) if p.is_file())
    if not paths:
        raise MissingFileError(
            f"{layout.root}: no train histories: neither {layout.train} nor {layout.item_seq} "
            "exists (a head that learns from behaviour needs one of them)")
    parts = [_distinct_histories(path, max_len) for path in paths]
    width = max(seq.shape[1] for _, seq, _ in parts)
    users = np.concatenate([u for u, _, _ in parts])
    seqs = np.concatenate([np.pad(s, ((0, 0), (width - s.shape[1], 0))) for _, s, _ in parts])
    users, seqs = _longest_windows(users, seqs)
    rows_read = sum(n for _, _, n in parts)
    logger.info("train histories: %d kept of %d rows read from %s", len(users), rows_read,
                ", ".join(str(p) for p in paths))
    return TrainHistories(user_id=users, item_seq=seqs, sources=paths, rows_read=rows_read)


def _distinct_histories(path: Path, max_len: int | None) -> tuple[np.ndarray, np.ndarray, int]:
    """(user ids, histories, rows read) of ``path``: distinct non-empty (user, history)
    pairs, read by batches so that repeats never pile up in memory."""
    pf = open_parquet(path)
    check_columns(path, pf.schema_arrow, HISTORY_COLUMNS)
    chunks, width, start = [], None, 0
    try:
        for batch in pf.iter_batches(batch_size=BATCH_ROWS, columns=list(HISTORY_COLUMNS)):
            users = scalar_to_numpy(batch.column("user_id"), path, "user_id", start)
            matrix = list_to_matrix(batch.column("item_seq"), path, "item_seq", width, start)
            width = matrix.shape[1]
            if max_len is not None:
                matrix = matrix[:, max(0, width - max_len):]
            rows = np.concatenate([users[:, None], matrix], axis=1)
            chunks.append(np.unique(rows[(matrix != 0).any(axis=1)], axis=0))
            start += batch.num_rows
    except (pa.ArrowException, OSError) as err:
        raise DatasetError(f"{path}: cannot read rows from {start} on "
                           f"(truncated or corrupt file?): {err}") from err
    keep = width if max_len is None or width is None else min(width, max_len)
    rows = np.unique(np.concatenate(chunks), axis=0) if chunks else np.zeros((0, 1 + (keep or 0)), np.int64)
    return rows[:, 0], rows[:, 1:], start


def _longest_windows(users: np.ndarray, seqs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Drop each history that equals, or is the oldest-first start of, another history of
    the same user; the rest sorted by (user, history)."""
    if len(users) == 0:
        return users, seqs
    # Oldest first, left-aligned: a history that starts another is then its prefix, and in
    # lexicographic order a prefix sits right before the rows that extend it.
    order = np.argsort(seqs == 0, axis=1, kind="stable")
    aligned = np.concatenate([users[:, None], np.take_along_axis(seqs, order, axis=1)], axis=1)
    rows = np.lexsort(aligned.T[::-1])
    aligned, users, seqs = aligned[rows], users[rows], seqs[rows]
    used = 1 + (aligned[:, 1:] != 0).sum(axis=1)  # user column + the history's items
    beyond = np.arange(aligned.shape[1])[None, :] >= used[:-1, None]
    covered = ((aligned[:-1] == aligned[1:]) | beyond).all(axis=1)
    keep = np.append(~covered, True)
    return users[keep], seqs[keep]
