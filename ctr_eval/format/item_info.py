"""The rules of item_info.parquet (row i = item i, row 0 the all-zero padding item, 5 tag
ids >= 0, 128 finite floats), as rule functions the loaders raise on and the validator
counts with, plus the table's fingerprint."""
from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa

from ctr_eval.format.columns import list_to_matrix, read_columns, scalar_to_numpy
from ctr_eval.format.layout import EMBEDDING_DIM, ITEM_INFO_COLUMNS, TAGS_PER_ITEM, DatasetError

@dataclass
class Violation:
    """Rows of an item table that break one rule (rows are item_info row numbers)."""

    column: str | None
    rule: str
    rows: np.ndarray
    values: np.ndarray | None = None  # what the offending rows hold, when it helps


def item_id_violation(ids: np.ndarray, rows: np.ndarray) -> Violation:
    """Row i must hold item i (``rows``: the item_info row numbers of ``ids``)."""
    wrong = ids != rows
    return Violation("item_id", "row i must hold item i (item_id == row index; row 0 = padding)",
                     rows[wrong], ids[wrong])


def tag_violation(tags: np.ndarray, rows: np.ndarray, tag_vocab: int | None = None) -> Violation:
    """Tag ids are >= 0, and < ``tag_vocab`` when it is known; 0 is the padding tag."""
    top = np.inf if tag_vocab is None else tag_vocab - 1
    outside = (tags < 0) | (tags > top)
    bad = outside.any(axis=1)
    rule = ("tag ids must be >= 0 (0 = padding)" if tag_vocab is None else
            f"tag ids must be in 0..{tag_vocab - 1} (0 = padding, tag_vocab={tag_vocab})")
    first_bad_value = tags[bad, outside[bad].argmax(axis=1)] if bad.any() else None
    return Violation("item_tags", rule, rows[bad], first_bad_value)


def embedding_violation(emb: np.ndarray, rows: np.ndarray, column: str = "item_emb_d128") -> Violation:
    """Embedding values are finite."""
    bad = ~np.isfinite(emb).all(axis=1)
    return Violation(column, "embedding values must be finite (no NaN or inf)", rows[bad])


def padding_violation(tags_row0: np.ndarray | None, emb_row0: np.ndarray | None) -> Violation:
    """Row 0 is the all-zero padding item."""
    found = []
    if tags_row0 is not None and np.any(tags_row0 != 0):
        found.append(f"item_tags {tags_row0.tolist()}")
    if emb_row0 is not None and np.any(emb_row0 != 0):
        found.append(f"item_emb_d128 with {int(np.count_nonzero(emb_row0))} non-zero values")
    rule = ("row 0 must be the all-zero padding item (item_id 0, item_tags all 0, "
            "item_emb_d128 all 0); found " + ", ".join(found))
    return Violation(None, rule, np.array([0] if found else [], dtype=np.int64))


def item_info_violations(ids: np.ndarray | None = None, tags: np.ndarray | None = None,
                         emb: np.ndarray | None = None) -> list[Violation]:
    """Every item_info rule broken by a whole table (any of the three columns may be None)."""
    out: list[Violation] = []
    for values, rule in ((ids, item_id_violation), (tags, tag_violation), (emb, embedding_violation)):
        if values is not None:
            out.append(rule(values, np.arange(len(values))))
    row0 = [None if values is None or not len(values) else values[0] for values in (tags, emb)]
    out.append(padding_violation(*row0))
    return [v for v in out if len(v.rows)]


def raise_first(violations: list[Violation], where: str | Path) -> None:
    """Raise :class:`DatasetError` for the first violation, naming file, column and row."""
    if not violations:
        return
    v = violations[0]
    if v.column is None:  # a rule about one named row (the padding row)
        raise DatasetError(f"{where}: {v.rule}")
    holds = f" holds {v.values[0]}" if v.values is not None and len(v.values) else ""
    more = f"; {len(v.rows)} rows break this" if len(v.rows) > 1 else ""
    raise DatasetError(f"{where}: column {v.column!r} row {int(v.rows[0])}{holds}: {v.rule}{more}")


def check_embedding_table(emb: np.ndarray, where: str) -> np.ndarray:
    """An (N+1, 128) float item embedding table, row i = item i, row 0 zero, all finite."""
    if emb.ndim != 2 or emb.shape[1] != EMBEDDING_DIM:
        raise DatasetError(f"{where}: embedding table has shape {tuple(emb.shape)}; expected "
                           f"(N+1, {EMBEDDING_DIM}) with row i = item i and row 0 = padding")
    if emb.shape[0] < 2:
        raise DatasetError(f"{where}: embedding table has {emb.shape[0]} rows; expected N+1 >= 2")
    raise_first(item_info_violations(emb=emb), where)
    return emb


def read_item_info(path: str | os.PathLike, columns: tuple[str, ...] = tuple(ITEM_INFO_COLUMNS)
                   ) -> dict[str, np.ndarray]:
    """The ``columns`` of an item_info.parquet as arrays (item_id (n,), item_tags (n, 5),
    item_emb_d128 (n, 128)), checked against every item_info rule."""
    path = Path(path)
    unknown = sorted(set(columns) - set(ITEM_INFO_COLUMNS))
    if unknown:
        raise ValueError(f"unknown item_info column(s) {unknown}; valid: {list(ITEM_INFO_COLUMNS)}")
    table = read_columns(path, {c: ITEM_INFO_COLUMNS[c] for c in columns})
    out: dict[str, np.ndarray] = {}
    if "item_id" in columns:
        out["item_id"] = scalar_to_numpy(table.column("item_id"), path, "item_id")
    if "item_tags" in columns:
        out["item_tags"] = list_to_matrix(table.column("item_tags"), path, "item_tags",
                                          TAGS_PER_ITEM, fixed=True)
    if "item_emb_d128" in columns:
        out["item_emb_d128"] = list_to_matrix(table.column("item_emb_d128"), path, "item_emb_d128",
                                              EMBEDDING_DIM, fixed=True, dtype=np.float32)
    raise_first(item_info_violations(out.get("item_id"), out.get("item_tags"),
                                     out.get("item_emb_d128")), path)
    return out


def item_info_table(tags: np.ndarray, emb: np.ndarray) -> pa.Table:
    """The arrow table of an item_info.parquet from (N+1, 5) tags and (N+1, 128) vectors."""
    raise_first(item_info_violations(tags=tags, emb=emb), "item_info table")
    rows = len(emb)
    if tags.shape != (rows, TAGS_PER_ITEM) or emb.shape != (rows, EMBEDDING_DIM):
        raise ValueError(f"item_info needs tags ({rows}, {TAGS_PER_ITEM}) and embeddings "
                         f"({rows}, {EMBEDDING_DIM}); got {tags.shape} and {emb.shape}")

    def fixed_lists(values: np.ndarray) -> pa.ListArray:
        offsets = np.arange(0, values.size + 1, values.shape[1], dtype=np.int32)
        return pa.ListArray.from_arrays(pa.array(offsets), pa.array(values.ravel()))

    return pa.table({
        "item_id": pa.array(np.arange(rows, dtype=np.int64)),
        "item_tags": fixed_lists(np.ascontiguousarray(tags, dtype=np.int64)),
        "item_emb_d128": fixed_lists(np.ascontiguousarray(emb, dtype=np.float32)),
    })


def item_table_fingerprint(tags: np.ndarray, emb: np.ndarray, *extras: np.ndarray | None) -> str:
    """First 16 hex digits of a sha256 over the item table's bytes (tags as int64,
    embeddings as float32, then each extra Task 2 table given, as int64; ``None`` extras
    add nothing, so a table without them keeps its fingerprint): ties a run to the exact
    tables it was trained with."""
    digest = hashlib.sha256()
    digest.update(np.ascontiguousarray(np.asarray(tags), dtype=np.int64).tobytes())
    digest.update(np.ascontiguousarray(np.asarray(emb), dtype=np.float32).tobytes())
    for extra in extras:
        if extra is not None:
            extra = np.ascontiguousarray(np.asarray(extra), dtype=np.int64)
            digest.update(str(extra.shape).encode())
            digest.update(extra.tobytes())
    return digest.hexdigest()[:16]
