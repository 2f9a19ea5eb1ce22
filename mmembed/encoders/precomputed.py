"""Vectors that already exist on disk, looked up by item id.

Sources:
* a parquet file with an id column (default ``item_id``) and a list-of-float column, e.g.
  the challenge's ``item_feature.parquet`` columns ``txt_emb_BERT`` (768) and
  ``img_emb_CLIPRN50`` (1024). ``path`` may also be a data directory: its
  ``item_feature.parquet`` (or the parent's, for ``ROOT/MicroLens_1M_x1``) is used;
* a 2-d ``.npy`` array: row i holds item id i (row 0 = padding), or, with ``ids_path``
  (an .npy of int ids, one per row), the row of each listed id.

Items absent from the source, or whose stored vector is null or not finite, get
valid=False and a zero row.
"""
from __future__ import annotations

import hashlib
import logging
from pathlib import Path
from typing import Any

import numpy as np

from . import register_encoder
from .base import Encoder

logger = logging.getLogger(__name__)


@register_encoder("precomputed")
class PrecomputedEncoder(Encoder):
    """Stored vectors from a parquet column or an .npy array, keyed by item id."""

    modalities = ()
    defaults = {"path": None, "column": None, "id_column": "item_id", "ids_path": None}
    # Accepted so every encoder takes a device; nothing here runs on one.
    runtime_defaults = {"device": None}

    def _check_options(self) -> None:
        path = self.options["path"]
        if not isinstance(path, str) or not path:
            raise TypeError(
                "precomputed needs option path: a parquet file, an .npy file or a data directory "
                "(e.g. {'name': 'precomputed', 'path': 'data/', 'column': 'txt_emb_BERT'})"
            )
        resolved = Path(path).expanduser()
        if resolved.is_dir():
            for candidate in (resolved / "item_feature.parquet", resolved.parent / "item_feature.parquet"):
                if candidate.is_file():
                    resolved = candidate
                    break
            else:
                raise FileNotFoundError(f"precomputed: directory {str(resolved)!r} holds no item_feature.parquet (nor does its parent)")
        if not resolved.is_file():
            raise FileNotFoundError(f"precomputed: no such file {str(resolved)!r}")
        self._path = resolved.resolve()
        self._kind = "npy" if self._path.suffix == ".npy" else "parquet"
        if self._kind == "parquet":
            self._inspect_parquet()
        else:
            self._inspect_npy()

    def _inspect_parquet(self) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        column, id_column = self.options["column"], self.options["id_column"]
        try:
            pf = pq.ParquetFile(self._path)
        except (pa.ArrowInvalid, OSError) as exc:
            raise ValueError(f"precomputed: cannot read parquet file {str(self._path)!r}: {exc}") from None
        schema = pf.schema_arrow
        list_columns = [f.name for f in schema if pa.types.is_list(f.type) or pa.types.is_large_list(f.type)
                        or pa.types.is_fixed_size_list(f.type)]
        if column is None or column not in schema.names:
            raise ValueError(
                f"precomputed: column {column!r} not in {self._path.name}; vector columns there: {list_columns}"
            )
        if column not in list_columns or not pa.types.is_floating(schema.field(column).type.value_type):
            raise ValueError(
                f"precomputed: column {column!r} of {self._path.name} has type {schema.field(column).type}; "
                f"expected a list of floats"
            )
        if id_column not in schema.names or not pa.types.is_integer(schema.field(id_column).type):
            raise ValueError(
                f"precomputed: id column {id_column!r} missing from {self._path.name} or not an integer "
                f"column; columns: {schema.names}"
            )
        dim = None
        for batch in pf.iter_batches(batch_size=1024, columns=[column]):
            lengths = batch.column(0).value_lengths() if hasattr(batch.column(0), "value_lengths") else None
            if lengths is None:
                dim = batch.schema.field(0).type.list_size
                break
            present = [x for x in lengths.to_pylist() if x is not None]
            if present:
                dim = present[0]
                break
        if not dim:
            raise ValueError(f"precomputed: column {column!r} of {self._path.name} has no non-empty vectors")
        self._dim = int(dim)

    def _inspect_npy(self) -> None:
        array = np.load(self._path, mmap_mode="r")
        if array.ndim != 2:
            raise ValueError(f"precomputed: {self._path.name} holds an array of shape {array.shape}; expected 2-d (rows, dim)")
        if self.options["column"] is not None:
            raise ValueError("precomputed: option column applies to parquet files, not .npy")
        ids_path = self.options["ids_path"]
        if ids_path is not None:
            ids = np.load(Path(ids_path).expanduser())
            if ids.shape != (array.shape[0],):
                raise ValueError(
                    f"precomputed: ids file {ids_path!r} has shape {ids.shape}; expected ({array.shape[0]},), "
                    f"one id per row of {self._path.name}"
                )
        self._dim = int(array.shape[1])

    def weights_id(self) -> str:
        stat = self._path.stat()
        parts = [f"{self._path}:{stat.st_size}:{stat.st_mtime_ns}"]
        if self.options["ids_path"]:
            ids_stat = Path(self.options["ids_path"]).expanduser().stat()
            parts.append(f"{ids_stat.st_size}:{ids_stat.st_mtime_ns}")
        digest = hashlib.sha256("|".join(parts).encode()).hexdigest()[:16]
        return f"file:{self._path}#{digest}"

    @property
    def dim(self) -> int:
        return self._dim

    def _load_model(self) -> Any:
        """Read ids and vectors once; return (sorted ids, row order, vectors, row ok)."""
        if self._kind == "npy":
            vectors = np.load(self._path, mmap_mode="r")
            if self.options["ids_path"] is not None:
                ids = np.load(Path(self.options["ids_path"]).expanduser()).astype(np.int64)
            else:
                ids = np.arange(vectors.shape[0], dtype=np.int64)
            row_ok = np.ones(len(ids), dtype=bool)
        else:
            ids, vectors, row_ok = self._read_parquet()
        order = np.argsort(ids, kind="stable")
        sorted_ids = ids[order]
        dup = np.flatnonzero(sorted_ids[1:] == sorted_ids[:-1])
        if len(dup):
            raise ValueError(f"precomputed: item id {int(sorted_ids[dup[0]])} appears more than once in {self._path.name}")
        return sorted_ids, order, vectors, row_ok

    def _read_parquet(self):
        import pyarrow as pa
        import pyarrow.compute as pc
        import pyarrow.parquet as pq

        column, id_column = self.options["column"], self.options["id_column"]
        table = pq.read_table(self._path, columns=[id_column, column])
        ids = table.column(id_column).to_numpy().astype(np.int64)
        col = table.column(column).combine_chunks()
        if pa.types.is_fixed_size_list(col.type):
            col = col.cast(pa.list_(col.type.value_type))
        lengths = pc.fill_null(pc.list_value_length(col), 0).to_numpy()
        row_ok = lengths == self._dim
        bad = np.flatnonzero((lengths != self._dim) & (lengths != 0))
        if len(bad):
            raise ValueError(
                f"precomputed: {self._path.name} column {column!r} row {int(bad[0])} has a vector of length "
                f"{int(lengths[bad[0]])}; expected {self._dim} like the others"
            )
        vectors = np.zeros((len(ids), self._dim), dtype=np.float32)
        values = pc.list_flatten(col).to_numpy(zero_copy_only=False).astype(np.float32)
        vectors[row_ok] = values.reshape(-1, self._dim)
        return ids, vectors, row_ok

    def _encode(self, catalog, batch_size, progress, num_workers):
        sorted_ids, order, vectors, row_ok = self._model
        wanted = np.asarray(catalog.item_ids, dtype=np.int64)
        where = np.searchsorted(sorted_ids, wanted)
        where = np.clip(where, 0, max(len(sorted_ids) - 1, 0))
        found = (sorted_ids[where] == wanted) if len(sorted_ids) else np.zeros(len(wanted), bool)
        rows = order[where]
        out = np.zeros((len(wanted), self._dim), dtype=np.float32)
        out[found] = np.asarray(vectors[rows[found]], dtype=np.float32)
        valid = found & row_ok[rows]
        finite = np.isfinite(out).all(axis=1)
        n_nonfinite = int((valid & ~finite).sum())
        if n_nonfinite:
            logger.warning("precomputed: %d stored vectors hold NaN/inf; treated as missing", n_nonfinite)
        valid &= finite
        extra = {"source": str(self._path), "n_not_in_source": int((~found).sum()), "n_nonfinite": n_nonfinite}
        return out, valid, extra
