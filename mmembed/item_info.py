"""The challenge's item_info.parquet: write one from item vectors, and check one.

The rules (row i = item i, row 0 the all-zero padding item, 5 tags, 128 finite floats)
live in :mod:`ctr_eval.format`, the judge's file contract; this module applies them.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np

from ctr_eval.format import (EMBEDDING_DIM, TAGS_PER_ITEM, DatasetError, atomic_path, find_layout,
                             item_codes_table, item_info_table, read_item_codes, read_item_info)

logger = logging.getLogger(__name__)


def write_item_info(
    path: str | os.PathLike,
    ids: np.ndarray,
    vectors: np.ndarray,
    tags: np.ndarray | None,
) -> Path:
    """Write (and read back and check) an item_info.parquet; see ItemEmbeddings.save_item_info.

    ``tags`` is either (N, 5) in the order of ``ids``, or (N+1, 5) already by item id
    (row 0 = padding), or None (all-zero tags).
    """
    import pyarrow.parquet as pq

    path = Path(path)
    ids = np.asarray(ids, dtype=np.int64)
    by_id = vectors_by_id(path, ids, np.asarray(vectors))
    tag_rows = _tags_by_id(ids, tags)
    with atomic_path(path) as tmp:
        pq.write_table(item_info_table(tag_rows, by_id), tmp)
    check_item_info(path)
    logger.info("wrote %s (%d items + padding row)", path, len(ids))
    return path


def write_item_codes(path: str | os.PathLike, ids: np.ndarray, codes: np.ndarray) -> Path:
    """Write (and read back and check) an item_codes.parquet: the (N, levels) ``codes`` of
    items ``ids`` (exactly 1..N, any order) by item id, row 0 (padding) -1."""
    import pyarrow.parquet as pq

    path = Path(path)
    ids = np.asarray(ids, dtype=np.int64)
    codes = np.asarray(codes)
    if codes.ndim != 2 or len(codes) != len(ids) or not np.issubdtype(codes.dtype, np.integer):
        raise ValueError(f"cannot write {path}: codes must be integer (items, levels) for the {len(ids)} "
                         f"items, got {codes.dtype} {codes.shape}")
    if not np.array_equal(np.sort(ids), np.arange(1, len(ids) + 1)):
        raise ValueError(f"cannot write {path}: item_codes.parquet needs item ids exactly 1..{len(ids)}")
    by_id = np.full((len(ids) + 1, codes.shape[1]), -1, dtype=np.int64)
    by_id[ids] = codes
    with atomic_path(path) as tmp:
        pq.write_table(item_codes_table(by_id), tmp)
    read_item_codes(path, len(ids) + 1)
    logger.info("wrote %s (%d items x %d levels of codes)", path, len(ids), codes.shape[1])
    return path


def vectors_by_id(path: Path, ids: np.ndarray, vectors: np.ndarray) -> np.ndarray:
    """(N+1, 128) float32 with row i = the vector of item i, row 0 zero; ValueError naming
    ``path`` when the vectors or ids cannot make an item_info file."""
    n_items = len(ids)
    if vectors.shape != (n_items, EMBEDDING_DIM):
        raise ValueError(
            f"item_info.parquet needs {EMBEDDING_DIM}-d vectors (item_emb_d128), got "
            f"{vectors.shape}; extract with dim={EMBEDDING_DIM}"
        )
    if not np.isfinite(vectors).all():
        bad = ids[~np.isfinite(vectors).all(axis=1)][:5].tolist()
        raise ValueError(f"cannot write {path}: vectors of item ids {bad} are not finite")
    if not np.array_equal(np.sort(ids), np.arange(1, n_items + 1)):
        wrong = sorted(set(ids.tolist()) ^ set(range(1, n_items + 1)))[:5]
        raise ValueError(
            f"cannot write {path}: item_info.parquet needs item ids exactly 1..{n_items} "
            f"(row i = item i); these ids are not (first offending ids: {wrong})"
        )
    by_id = np.zeros((n_items + 1, EMBEDDING_DIM), dtype=np.float32)
    by_id[ids] = vectors
    return by_id


def _tags_by_id(ids: np.ndarray, tags: np.ndarray | None) -> np.ndarray:
    n_items = len(ids)
    rows = np.zeros((n_items + 1, TAGS_PER_ITEM), dtype=np.int64)
    if tags is None:
        return rows
    tags = np.asarray(tags, dtype=np.int64)
    if tags.shape == (n_items + 1, TAGS_PER_ITEM):
        rows[1:] = tags[1:]
    elif tags.shape == (n_items, TAGS_PER_ITEM):
        rows[ids] = tags
    else:
        raise ValueError(f"tags must have shape ({n_items}, {TAGS_PER_ITEM}) or "
                         f"({n_items + 1}, {TAGS_PER_ITEM}), got {tags.shape}")
    return rows


def check_item_info(path: str | os.PathLike) -> None:
    """Every rule of the challenge's loader for one item_info.parquet (see
    :mod:`ctr_eval.format`); :class:`~ctr_eval.format.DatasetError` naming the rule."""
    read_item_info(path)


def tags_from(like: str | os.PathLike, n_items: int) -> np.ndarray:
    """(N+1, 5) tags by item id from an item_info.parquet or a dataset dir holding one,
    checked to describe exactly ``n_items`` items."""
    like = Path(like)
    if like.is_dir():
        like = find_layout(like).require("item_info")
    if not like.is_file():
        raise FileNotFoundError(f"{like} not found: `like` must be an item_info.parquet or a dataset directory")
    tags = read_item_info(like, ("item_id", "item_tags"))["item_tags"]
    if len(tags) != n_items + 1:
        raise DatasetError(
            f"{like} has {len(tags)} rows but these embeddings have {n_items} items "
            f"(expected {n_items + 1} rows: padding + 1..{n_items})"
        )
    return tags
