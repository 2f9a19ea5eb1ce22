"""Break one value of a parquet file in place, for tests of bad-input refusals."""
from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq


def set_values(path: Path, column: str, rows: list[int], value) -> None:
    """Set ``column`` at ``rows`` to ``value``, keeping the column's arrow type."""
    table = pq.read_table(path)
    index = table.schema.get_field_index(column)
    values = table.column(column).to_numpy().copy()
    values[rows] = value
    table = table.set_column(index, column, pa.array(values, type=table.schema.field(index).type))
    pq.write_table(table, path)
