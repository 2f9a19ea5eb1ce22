"""Parquet files and columns of the layout, read without per-row Python objects; every
error names the file, column and row."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from ctr_eval.format.layout import EXPECTED_LAYOUT, DatasetError, MissingFileError

# Logical column kinds of the layout and the words used for them in error messages.
KIND_NAMES = {
    "int": "int64",
    "str": "string",
    "int_list": "list<int64>",
    "float_list": "list<float32>",
}


def open_parquet(path: str | os.PathLike, **options: Any) -> pq.ParquetFile:
    """Open ``path`` as parquet, turning pyarrow's errors into ones naming the file."""
    path = Path(path)
    if not path.is_file():
        raise MissingFileError(f"{path}: file not found ({EXPECTED_LAYOUT})")
    try:
        return pq.ParquetFile(path, **options)
    except (pa.ArrowException, OSError) as err:
        raise DatasetError(
            f"{path}: not a readable parquet file (truncated or corrupt?): {err}"
        ) from err


def _list_value_type(typ: pa.DataType) -> pa.DataType | None:
    if pa.types.is_list(typ) or pa.types.is_large_list(typ) or pa.types.is_fixed_size_list(typ):
        return typ.value_type
    return None


def type_matches(typ: pa.DataType, kind: str) -> bool:
    """Whether arrow type ``typ`` is acceptable for a column of logical ``kind``."""
    if kind == "int":
        return pa.types.is_integer(typ)
    if kind == "str":
        return pa.types.is_string(typ) or pa.types.is_large_string(typ)
    value = _list_value_type(typ)
    if value is None:
        return False
    if kind == "int_list":
        return pa.types.is_integer(value)
    if kind == "float_list":
        return pa.types.is_floating(value)
    raise ValueError(f"unknown column kind {kind!r}")


def column_type_problems(schema: pa.Schema, expected: dict[str, str]) -> list[tuple[str, str]]:
    """(column, message) for each expected column that is missing or of the wrong type."""
    out = []
    for column, kind in expected.items():
        index = schema.get_field_index(column)
        if index < 0:
            out.append((column, f"missing column (expected type {KIND_NAMES[kind]}; "
                                f"found columns: {', '.join(schema.names) or 'none'})"))
        elif not type_matches(schema.field(index).type, kind):
            out.append((column, f"found type {schema.field(index).type}, "
                                f"expected type {KIND_NAMES[kind]}"))
    return out


def check_columns(path: Path, schema: pa.Schema, expected: dict[str, str]) -> None:
    """Raise :class:`DatasetError` naming file, column, found and expected type."""
    problems = column_type_problems(schema, expected)
    if problems:
        column, message = problems[0]
        raise DatasetError(f"{path}: column {column!r}: {message}")


def read_columns(path: Path, expected: dict[str, str]) -> pa.Table:
    """Read only ``expected`` columns of ``path`` after checking their presence and types."""
    pf = open_parquet(path)
    check_columns(path, pf.schema_arrow, expected)
    try:
        return pf.read(columns=list(expected))
    except (pa.ArrowException, OSError) as err:
        raise DatasetError(f"{path}: cannot read columns {list(expected)} "
                           f"(truncated or corrupt file?): {err}") from err


def iter_batches(pf: pq.ParquetFile, path: Path, batch_size: int,
                 columns: list[str]) -> Iterator[tuple[int, pa.RecordBatch]]:
    """(first row, record batch) over ``columns``; a read error names the file."""
    start = 0
    try:
        for batch in pf.iter_batches(batch_size=batch_size, columns=columns):
            yield start, batch
            start += batch.num_rows
    except (pa.ArrowException, OSError) as err:
        raise DatasetError(f"{path}: cannot read rows from {start} on "
                           f"(truncated or corrupt file?): {err}") from err


def as_array(values: pa.Array | pa.ChunkedArray) -> pa.Array:
    if isinstance(values, pa.ChunkedArray):
        return values.combine_chunks() if values.num_chunks != 1 else values.chunk(0)
    return values


def first_null_row(values: pa.Array | pa.ChunkedArray) -> int | None:
    """Index of the first null in ``values``, or None."""
    if values.null_count == 0:
        return None
    mask = as_array(values).is_null().to_numpy(zero_copy_only=False)
    return int(mask.argmax())


def list_lengths(values: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """Length of each list in a list column (nulls count as length 0)."""
    return pc.list_value_length(values).fill_null(0).to_numpy(zero_copy_only=False)


def list_to_matrix(values: pa.Array | pa.ChunkedArray, path: Path | str, column: str,
                   width: int | None = None, row_offset: int = 0, fixed: bool = False,
                   dtype: Any = "int64") -> np.ndarray:
    """A list column of equal-length lists as an (n, width) numpy array, without per-row
    Python objects. ``width`` None takes the first row's length; ``fixed`` says ``width``
    is the layout's own (5 tags, 128 floats), not one seen in the file. Null lists, null
    values or other lengths raise :class:`DatasetError` naming file, column and row
    (``row_offset`` + index inside ``values``)."""
    arr = as_array(values)
    if _list_value_type(arr.type) is None:
        raise DatasetError(f"{path}: column {column!r}: found type {arr.type}, expected a list column")
    null_row = first_null_row(arr)
    if null_row is not None:
        raise DatasetError(f"{path}: column {column!r} row {row_offset + null_row}: "
                           f"null list (expected a list of {width or 'equal-length'} values)")
    lengths = list_lengths(arr)
    if width is None:
        width = int(lengths[0]) if len(lengths) else 0
    bad = np.flatnonzero(lengths != width)
    if len(bad):
        row = int(bad[0])
        like = "" if fixed else " like the file's first row"
        raise DatasetError(
            f"{path}: column {column!r} row {row_offset + row}: list of length "
            f"{int(lengths[row])}, expected length {width}{like} "
            f"({len(bad)} {'row differs' if len(bad) == 1 else 'rows differ'})")
    flat = arr.flatten()
    if flat.null_count:
        row = int(np.flatnonzero(flat.is_null().to_numpy(zero_copy_only=False))[0]) // max(width, 1)
        raise DatasetError(f"{path}: column {column!r} row {row_offset + row}: null value "
                           f"inside the list")
    out = flat.to_numpy(zero_copy_only=False).astype(dtype, copy=False)
    return out.reshape(len(arr), width)


def scalar_to_numpy(values: pa.Array | pa.ChunkedArray, path: Path | str, column: str,
                    row_offset: int = 0) -> np.ndarray:
    """An integer column as an int64 numpy array; a null raises :class:`DatasetError`."""
    null_row = first_null_row(values)
    if null_row is not None:
        raise DatasetError(f"{path}: column {column!r} row {row_offset + null_row}: "
                           f"null value (expected an integer)")
    return np.asarray(as_array(values).to_numpy(zero_copy_only=False), dtype=np.int64)
