"""The challenge's item_info.parquet: write one from item vectors, and check one.

Row i holds item i, row 0 is the all-zero padding item; columns item_id int64, item_tags
list<int64> (5), item_emb_d128 list<float32> (128).
"""
from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np

from mmembed._io import atomic_path

logger = logging.getLogger(__name__)

ITEM_INFO_DIM = 128
N_TAGS = 5


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
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = Path(path)
    ids = np.asarray(ids, dtype=np.int64)
    vectors = np.asarray(vectors)
    n_items = len(ids)
    if vectors.shape != (n_items, ITEM_INFO_DIM):
        raise ValueError(
            f"item_info.parquet needs {ITEM_INFO_DIM}-d vectors (item_emb_d128), got "
            f"{vectors.shape}; extract with dim={ITEM_INFO_DIM}"
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
    by_id = np.zeros((n_items + 1, ITEM_INFO_DIM), dtype=np.float32)
    by_id[ids] = vectors
    tag_rows = np.zeros((n_items + 1, N_TAGS), dtype=np.int64)
    if tags is not None:
        tags = np.asarray(tags, dtype=np.int64)
        if tags.shape == (n_items + 1, N_TAGS):
            tag_rows[1:] = tags[1:]
        elif tags.shape == (n_items, N_TAGS):
            tag_rows[ids] = tags
        else:
            raise ValueError(f"tags must have shape ({n_items}, {N_TAGS}) or ({n_items + 1}, {N_TAGS}), got {tags.shape}")
    table = pa.table({
        "item_id": pa.array(np.arange(n_items + 1, dtype=np.int64)),
        "item_tags": pa.ListArray.from_arrays(
            pa.array(np.arange(0, (n_items + 1) * N_TAGS + 1, N_TAGS, dtype=np.int32)),
            pa.array(tag_rows.ravel()),
        ),
        "item_emb_d128": pa.ListArray.from_arrays(
            pa.array(np.arange(0, (n_items + 1) * ITEM_INFO_DIM + 1, ITEM_INFO_DIM, dtype=np.int32)),
            pa.array(by_id.ravel()),
        ),
    })
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp)
    check_item_info(path)
    logger.info("wrote %s (%d items + padding row)", path, n_items)
    return path


def check_item_info(path: str | os.PathLike) -> None:
    """The challenge loader's rules for one item_info.parquet; ValueError naming the rule.

    row i holds item i; row 0 is all-zero padding; item_tags are 5 ids >= 0;
    item_emb_d128 are 128 finite float32 values.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = Path(path)
    table = pq.read_table(path)
    expected = {"item_id", "item_tags", "item_emb_d128"}
    if not expected <= set(table.column_names):
        raise ValueError(f"{path}: columns {table.column_names}, expected {sorted(expected)}")
    n_rows = table.num_rows
    ids = table.column("item_id").to_numpy()
    if not np.array_equal(ids, np.arange(n_rows)):
        row = int(np.flatnonzero(ids != np.arange(n_rows))[0])
        raise ValueError(f"{path}: column item_id, row {row} holds {ids[row]}; row i must hold item i")
    emb = table.column("item_emb_d128").combine_chunks()
    tags = table.column("item_tags").combine_chunks()
    for name, column, width in (("item_emb_d128", emb, ITEM_INFO_DIM), ("item_tags", tags, N_TAGS)):
        lengths = column.value_lengths().to_numpy(zero_copy_only=False)
        if (lengths != width).any():
            row = int(np.flatnonzero(lengths != width)[0])
            raise ValueError(f"{path}: column {name}, row {row} has {lengths[row]} values, expected {width}")
    emb_values = emb.flatten().to_numpy().reshape(n_rows, ITEM_INFO_DIM)
    tag_values = tags.flatten().to_numpy().reshape(n_rows, N_TAGS)
    if not pa.types.is_float32(emb.type.value_type) or not np.isfinite(emb_values).all():
        raise ValueError(f"{path}: column item_emb_d128 must hold finite float32 values")
    if (tag_values < 0).any():
        row = int(np.flatnonzero((tag_values < 0).any(axis=1))[0])
        raise ValueError(f"{path}: column item_tags, row {row} has a negative tag id")
    if emb_values[0].any() or tag_values[0].any():
        raise ValueError(f"{path}: row 0 is the padding item and must be all zeros")


def _tags_from(like: str | os.PathLike, n_items: int) -> np.ndarray:
    """(N+1, 5) tags by item id from an item_info.parquet or a dataset dir holding one."""
    import pyarrow.parquet as pq

    like = Path(like)
    if like.is_dir():
        from mmembed.datasets import find_layout

        like = find_layout(like).require("item_info")
    if not like.is_file():
        raise FileNotFoundError(f"{like} not found: `like` must be an item_info.parquet or a dataset directory")
    table = pq.read_table(like, columns=["item_id", "item_tags"])
    if table.num_rows != n_items + 1:
        raise ValueError(
            f"{like} has {table.num_rows} rows but these embeddings have {n_items} items "
            f"(expected {n_items + 1} rows: padding + 1..{n_items})"
        )
    ids = table.column("item_id").to_numpy()
    if not np.array_equal(ids, np.arange(n_items + 1)):
        raise ValueError(f"{like}: row i must hold item i (column item_id)")
    tags = table.column("item_tags").combine_chunks()
    lengths = tags.value_lengths().to_numpy(zero_copy_only=False)
    if (lengths != N_TAGS).any():
        row = int(np.flatnonzero(lengths != N_TAGS)[0])
        raise ValueError(f"{like}: column item_tags, row {row} has {lengths[row]} tags, expected {N_TAGS}")
    return tags.flatten().to_numpy().astype(np.int64).reshape(n_items + 1, N_TAGS)


# -- extract ------------------------------------------------------------------------------
