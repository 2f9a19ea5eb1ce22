"""Arrow schemas of the MicroLens layout and helpers that build its list columns."""
from __future__ import annotations

import numpy as np
import pyarrow as pa

ROW_FIELDS = [
    pa.field("user_id", pa.int64()),
    pa.field("item_seq", pa.list_(pa.int64())),
    pa.field("likes_level", pa.int64()),
    pa.field("views_level", pa.int64()),
    pa.field("item_id", pa.int64()),
]
TRAIN_SCHEMA = pa.schema(ROW_FIELDS + [pa.field("label", pa.int64())])
TEST_SCHEMA = pa.schema(ROW_FIELDS)
ITEM_SEQ_SCHEMA = pa.schema([pa.field("user_id", pa.int64()),
                             pa.field("item_seq", pa.list_(pa.int64()))])
ITEM_INFO_SCHEMA = pa.schema([
    pa.field("item_id", pa.int64()),
    pa.field("item_tags", pa.list_(pa.int64())),
    pa.field("item_emb_d128", pa.list_(pa.float32())),
])
ITEM_FEATURE_SCHEMA = pa.schema([
    pa.field("item_id", pa.int64()),
    pa.field("item_title", pa.string()),
    pa.field("item_tags", pa.list_(pa.int64())),
    pa.field("likes_level", pa.int64()),
    pa.field("views_level", pa.int64()),
])
ROW_GROUP_ROWS = 250_000


def list_column(matrix: np.ndarray, value_type: pa.DataType) -> pa.ListArray:
    """A list<value_type> column from a 2-d array, one fixed-length list per row."""
    matrix = np.ascontiguousarray(matrix)
    rows, width = matrix.shape
    if rows * width >= 2**31:  # list<> has 32-bit offsets: write such tables in chunks
        raise ValueError(f"{rows} x {width} values do not fit one list column; write in chunks")
    offsets = pa.array(np.arange(rows + 1, dtype=np.int32) * np.int32(width), type=pa.int32())
    values = pa.array(matrix.reshape(-1), type=value_type)
    return pa.ListArray.from_arrays(offsets, values)


def item_emb_schema(n_variants: int) -> pa.Schema:
    fields = [pa.field("item_id", pa.int64())]
    fields += [pa.field(f"item_emb_d128_v{k + 1}", pa.list_(pa.float32()))
               for k in range(n_variants)]
    return pa.schema(fields)
