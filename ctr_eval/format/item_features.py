"""Task 2 item features beside the item table: semantic-ID codes and item-level likes/views.

``item_codes.parquet`` (written by mmembed beside an ``item_info.parquet`` when the fusion
head gives codes, e.g. ``rq``): row i holds item i, row 0 the padding item; columns
``item_id`` int64 (0..N) and ``item_codes`` list of L int64, one code per level, each
in 0..K-1 for items and -1 for the padding row.

Item-level likes/views come from the dataset's ``item_feature.parquet`` (one row per item,
ids 1..N in any order, ``likes_level`` and ``views_level`` in 0..10): the levels of every
history item, where the split files carry only the target's.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pyarrow as pa

from ctr_eval.format.columns import list_to_matrix, read_columns, scalar_to_numpy
from ctr_eval.format.layout import LEVEL_MAX, DatasetError

__all__ = ["ITEM_CODES_FILE", "check_item_codes", "item_codes_table", "read_item_codes", "read_item_levels"]

ITEM_CODES_FILE = "item_codes.parquet"
NO_CODE = -1  # the padding row's code at every level


def item_codes_table(codes: np.ndarray) -> pa.Table:
    """The arrow table of an item_codes.parquet from (N+1, L) codes by item id (row 0 -1)."""
    codes = np.ascontiguousarray(codes, dtype=np.int64)
    check_item_codes(codes, "item codes")
    offsets = np.arange(0, codes.size + 1, codes.shape[1], dtype=np.int32)
    return pa.table({
        "item_id": pa.array(np.arange(len(codes), dtype=np.int64)),
        "item_codes": pa.ListArray.from_arrays(pa.array(offsets), pa.array(codes.ravel())),
    })


def read_item_codes(path: str | os.PathLike, rows: int | None = None) -> np.ndarray:
    """(N+1, L) int64 codes of an item_codes.parquet, checked (``rows``: the N+1 the item
    table has, when known)."""
    path = Path(path)
    table = read_columns(path, {"item_id": "int", "item_codes": "int_list"})
    ids = scalar_to_numpy(table.column("item_id"), path, "item_id")
    codes = list_to_matrix(table.column("item_codes"), path, "item_codes")
    wrong = np.flatnonzero(ids != np.arange(len(ids)))
    if wrong.size:
        raise DatasetError(f"{path}: column 'item_id' row {int(wrong[0])} holds {int(ids[wrong[0]])}; "
                           "row i must hold item i (0..N, row 0 = padding)")
    if rows is not None and len(codes) != rows:
        raise DatasetError(f"{path}: {len(codes)} rows, but the item table has {rows} (items 0..{rows - 1}); "
                           "the codes must come from the same items as the embedding table")
    check_item_codes(codes, str(path))
    return codes


def check_item_codes(codes: np.ndarray, where: str) -> None:
    """Raise DatasetError naming ``where`` unless ``codes`` are (N+1, L) by item id with
    -1 in row 0 and codes >= 0 elsewhere."""
    if codes.ndim != 2 or codes.shape[0] < 2 or codes.shape[1] < 1:
        raise DatasetError(f"{where}: codes must be (N+1, L) with N >= 1 items and L >= 1 levels, "
                           f"got shape {codes.shape}")
    if (codes[0] != NO_CODE).any():
        raise DatasetError(f"{where}: column 'item_codes' row 0 (padding) holds {codes[0].tolist()}; "
                           f"it must be {NO_CODE} at every level")
    bad = np.argwhere(codes[1:] < 0)
    if bad.size:
        row, level = int(bad[0, 0]) + 1, int(bad[0, 1])
        raise DatasetError(f"{where}: column 'item_codes' row {row} level {level} holds "
                           f"{int(codes[row, level])}; item codes must be >= 0")


def read_item_levels(path: str | os.PathLike, rows: int) -> np.ndarray:
    """(rows, 2) int64 [likes_level, views_level] by item id from item_feature.parquet,
    row 0 (padding) zero; every id 1..rows-1 must appear exactly once."""
    path = Path(path)
    table = read_columns(path, {"item_id": "int", "likes_level": "int", "views_level": "int"})
    ids = scalar_to_numpy(table.column("item_id"), path, "item_id")
    out = np.zeros((rows, 2), dtype=np.int64)
    outside = np.flatnonzero((ids < 1) | (ids >= rows))
    if outside.size:
        r = int(outside[0])
        raise DatasetError(f"{path}: column 'item_id' row {r} holds {int(ids[r])}; the item table "
                           f"has items 1..{rows - 1}")
    if len(ids) != rows - 1 or len(np.unique(ids)) != len(ids):
        raise DatasetError(f"{path}: {len(ids)} rows with {len(np.unique(ids))} distinct item ids; "
                           f"expected each of the item table's {rows - 1} items once")
    for k, column in enumerate(("likes_level", "views_level")):
        values = scalar_to_numpy(table.column(column), path, column)
        bad = np.flatnonzero((values < 0) | (values > LEVEL_MAX))
        if bad.size:
            r = int(bad[0])
            raise DatasetError(f"{path}: column {column!r} row {r} holds {int(values[r])}; "
                               f"valid levels are 0..{LEVEL_MAX}")
        out[ids, k] = values
    return out
