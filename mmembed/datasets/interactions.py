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
from ctr_eval.format import (SPLITS, DatasetError, check_columns, find_layout,
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
