"""Per-file rules of the dataset validator, applied by pyarrow batches.

Each rule adds findings to a :class:`Findings`: one problem per (file, column, rule) with
the number of offending rows and the first few of them, so a broken 3.6M-row file gives a
short report, not millions of lines. Rows are 0-based parquet row indices.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ctr_eval.format import (EMBEDDING_DIM, ITEM_INFO_COLUMNS, LEVEL_MAX, TAGS_PER_ITEM,
                             DatasetError, Violation, column_type_problems, embedding_violation,
                             item_id_violation, iter_batches, open_parquet, padding_violation, tag_violation)

logger = logging.getLogger(__name__)

BATCH_ROWS = 65_536


@dataclass
class _Rule:
    file: str
    column: str | None
    description: str
    what: str
    count: int
    examples: list[tuple[int | None, object]]


class Findings:
    """Problems found so far, grouped by (file, column, rule)."""

    def __init__(self, max_examples: int):
        self.max_examples = max(1, int(max_examples))
        self.rules: dict[tuple[str, str | None, str], _Rule] = {}

    def add(self, file: str, column: str | None, row: int | None, message: str) -> None:
        """One problem that is not about counting rows (missing file, wrong type...)."""
        self.rules.setdefault((file, column, message),
                              _Rule(file, column, message, "", 0, [(row, None)]))

    def flag(self, file: str, column: str | None, description: str, rows: np.ndarray,
             values: np.ndarray | None = None, what: str = "found") -> None:
        """``rows`` (global row numbers) break the rule ``description``; ``values`` are
        what those rows hold, shown for the first few as "row R (what V)"."""
        if len(rows) == 0:
            return
        rule = self.rules.setdefault((file, column, description),
                                     _Rule(file, column, description, what, 0, []))
        rule.count += len(rows)
        room = self.max_examples - len(rule.examples)
        if room > 0:
            shown = values[:room].tolist() if values is not None else [None] * min(room, len(rows))
            rule.examples += list(zip(rows[:room].tolist(), shown))

    def messages(self) -> list[tuple[str, str | None, int | None, str]]:
        out = []
        for rule in self.rules.values():
            if rule.count == 0:  # a single problem from add()
                out.append((rule.file, rule.column, rule.examples[0][0], rule.description))
                continue
            noun = "row breaks" if rule.count == 1 else "rows break"
            shown = ", ".join(f"row {r}" + (f" ({rule.what} {v})" if v is not None else "")
                              for r, v in rule.examples)
            more = ", ..." if rule.count > len(rule.examples) else ""
            message = f"{rule.description}; {rule.count} {noun} this: {shown}{more}"
            out.append((rule.file, rule.column, rule.examples[0][0], message))
        return out


@dataclass
class Context:
    """What the rules need to know about the whole dataset."""

    root: Path
    findings: Findings
    n_items: int | None  # N: item ids are 1..N; None when item_info/item_feature are unreadable
    tag_vocab: int

    def name(self, path: Path) -> str:
        try:
            return str(path.relative_to(self.root))
        except ValueError:
            return str(path)


def _as_array(column: pa.Array | pa.ChunkedArray) -> pa.Array:
    return column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column


def _check_nulls(ctx: Context, file: str, column: str, values: pa.Array, start: int) -> np.ndarray:
    """Flag null rows; return the mask of non-null rows."""
    valid = ~values.is_null().to_numpy(zero_copy_only=False)
    if not valid.all():
        ctx.findings.flag(file, column, "null value (every row needs a value)",
                          start + np.flatnonzero(~valid))
    return valid


def check_range(ctx: Context, file: str, column: str, values: np.ndarray, rows: np.ndarray,
                low: int, high: int, description: str) -> None:
    bad = (values < low) | (values > high)
    ctx.findings.flag(file, column, description, rows[bad], values[bad])


def list_matrix(ctx: Context, file: str, column: str, values: pa.Array, start: int,
                width: int | None, fixed: bool = False) -> tuple[np.ndarray, np.ndarray, int | None]:
    """Rows of a list column that have the expected length, as a matrix.

    ``fixed``: ``width`` is the layout's length (5 tags, 128 floats). Otherwise the file's
    first row sets it (``width`` None on the first batch). Returns (matrix of the good
    rows, their global row numbers, width).
    """
    values = _as_array(values)
    valid = _check_nulls(ctx, file, column, values, start)
    lengths = pc.list_value_length(values).fill_null(-1).to_numpy(zero_copy_only=False)
    if width is None and valid.any():
        width = int(lengths[np.argmax(valid)])
    if width is None:
        return np.zeros((0, 0), np.int64), np.zeros(0, np.int64), None
    wrong = valid & (lengths != width)
    rule = f"list length must be {width}" + ("" if fixed else " like the file's first row")
    ctx.findings.flag(file, column, rule, start + np.flatnonzero(wrong), lengths[wrong],
                      what="length")
    if isinstance(values, pa.FixedSizeListArray):
        offsets = np.arange(len(values) + 1) * values.type.list_size
        flat_arrow = values.flatten()
    else:
        offsets = values.offsets.to_numpy()
        flat_arrow = values.values
    if flat_arrow.null_count:  # nulls inside lists: flag their rows, keep them out
        null_at = np.flatnonzero(flat_arrow.is_null().to_numpy(zero_copy_only=False))
        null_rows = np.unique(np.searchsorted(offsets, null_at, side="right") - 1)
        null_rows = null_rows[(null_rows >= 0) & (null_rows < len(values))]
        ctx.findings.flag(file, column, "null value inside the list", start + null_rows)
        valid[null_rows] = False
        flat_arrow = flat_arrow.fill_null(0)
    flat = flat_arrow.to_numpy(zero_copy_only=False)
    good = np.flatnonzero(valid & (lengths == width))
    index = offsets[good][:, None] + np.arange(width)[None, :]
    return flat[index] if len(good) else flat[:0].reshape(0, width), start + good, width


def _scalar(ctx: Context, file: str, column: str, values: pa.Array,
            start: int) -> tuple[np.ndarray, np.ndarray]:
    values = _as_array(values)
    valid = _check_nulls(ctx, file, column, values, start)
    data = values.to_numpy(zero_copy_only=False)
    rows = start + np.flatnonzero(valid)
    return data[valid].astype(np.int64), rows


def _iter_batches(ctx: Context, path: Path,
                  expected: dict[str, str]) -> Iterator[tuple[int, pa.RecordBatch]]:
    """Yield (start row, batch) over the columns of ``expected`` that are present with the
    right type; missing/wrong columns and unreadable files become findings."""
    file = ctx.name(path)
    try:
        pf = open_parquet(path)
    except DatasetError as err:
        ctx.findings.add(file, None, None, str(err).split(": ", 1)[-1])
        return
    bad = column_type_problems(pf.schema_arrow, expected)
    for column, message in bad:
        ctx.findings.add(file, column, None, message)
    wanted = [c for c in expected if c not in dict(bad)]
    if not wanted:
        return
    try:
        yield from iter_batches(pf, path, BATCH_ROWS, wanted)
    except DatasetError as err:
        ctx.findings.add(file, None, None, str(err).split(": ", 1)[-1])


def _has(batch: pa.RecordBatch, column: str) -> bool:
    return batch.schema.get_field_index(column) >= 0


def _check_sequences(ctx: Context, file: str, batch: pa.RecordBatch, start: int,
                     width: int | None) -> int | None:
    seq, rows, width = list_matrix(ctx, file, "item_seq", batch.column("item_seq"), start, width)
    if not len(rows):
        return width
    nonzero = seq != 0
    late_pad = np.any(nonzero[:, :-1] & ~nonzero[:, 1:], axis=1)
    ctx.findings.flag(file, "item_seq", "history must be zero-LEFT-padded (no 0 after an item "
                      "id; most recent item last)", rows[late_pad])
    if ctx.n_items is not None:
        _flag_out_of_range(ctx, file, "item_seq", seq, rows, 0, ctx.n_items,
                           f"item ids must be in 0..{ctx.n_items} (0 = padding, "
                           f"1..{ctx.n_items} = items of item_info)")
    return width


def _flag_out_of_range(ctx: Context, file: str, column: str, matrix: np.ndarray,
                       rows: np.ndarray, low: int, high: int, description: str) -> None:
    """Flag rows of ``matrix`` holding a value outside low..high; show the first such
    value of each of the first few rows."""
    outside = (matrix < low) | (matrix > high)
    bad = np.flatnonzero(outside.any(axis=1))
    if len(bad):
        shown = bad[:ctx.findings.max_examples]
        first = matrix[shown, outside[shown].argmax(axis=1)]
        ctx.findings.flag(file, column, description, rows[bad], first)


def check_split(ctx: Context, path: Path, split: str) -> int:
    """train/valid/test.parquet; returns the number of rows read."""
    expected = {"user_id": "int", "item_seq": "int_list", "likes_level": "int",
                "views_level": "int", "item_id": "int"}
    if split != "test":
        expected["label"] = "int"
    return _check_rows(ctx, path, expected)


def check_user_sequences(ctx: Context, path: Path) -> int:
    return _check_rows(ctx, path, {"user_id": "int", "item_seq": "int_list"})


def _check_rows(ctx: Context, path: Path, expected: dict[str, str]) -> int:
    file = ctx.name(path)
    width: int | None = None
    n_rows = 0
    for start, batch in _iter_batches(ctx, path, expected):
        n_rows = start + batch.num_rows
        if _has(batch, "user_id"):
            _scalar(ctx, file, "user_id", batch.column("user_id"), start)
        if _has(batch, "item_seq"):
            width = _check_sequences(ctx, file, batch, start, width)
        if _has(batch, "item_id") and ctx.n_items is not None:
            values, rows = _scalar(ctx, file, "item_id", batch.column("item_id"), start)
            check_range(ctx, file, "item_id", values, rows, 1, ctx.n_items,
                        f"item_id must have an item_info row: 1..{ctx.n_items}")
        for level in ("likes_level", "views_level"):
            if _has(batch, level):
                values, rows = _scalar(ctx, file, level, batch.column(level), start)
                check_range(ctx, file, level, values, rows, 0, LEVEL_MAX,
                            f"{level} must be in 0..{LEVEL_MAX}")
        if _has(batch, "label"):
            values, rows = _scalar(ctx, file, "label", batch.column("label"), start)
            check_range(ctx, file, "label", values, rows, 0, 1, "label must be 0 or 1")
    return n_rows


def _flag(ctx: Context, file: str, violation: Violation, what: str = "found") -> None:
    ctx.findings.flag(file, violation.column, violation.rule, violation.rows, violation.values, what)


def _check_tags(ctx: Context, file: str, batch: pa.RecordBatch, start: int) -> tuple[np.ndarray, np.ndarray]:
    tags, rows, _ = list_matrix(ctx, file, "item_tags", batch.column("item_tags"), start,
                                TAGS_PER_ITEM, fixed=True)
    _flag(ctx, file, tag_violation(tags, rows, ctx.tag_vocab))
    return tags, rows


def _check_embeddings(ctx: Context, file: str, batch: pa.RecordBatch, column: str,
                      start: int) -> tuple[np.ndarray, np.ndarray]:
    emb, rows, _ = list_matrix(ctx, file, column, batch.column(column), start, EMBEDDING_DIM,
                               fixed=True)
    _flag(ctx, file, embedding_violation(emb, rows, column))
    return emb, rows


def item_count(path: Path) -> int | None:
    """N from item_info.parquet (rows - 1), None when unreadable."""
    try:
        return max(open_parquet(path).metadata.num_rows - 1, 0)
    except DatasetError:
        return None


def check_item_info_file(ctx: Context, path: Path) -> int:
    """item_info.parquet against the rules of :mod:`ctr_eval.format`; returns its rows."""
    file = ctx.name(path)
    n_rows = 0
    for start, batch in _iter_batches(ctx, path, ITEM_INFO_COLUMNS):
        n_rows = start + batch.num_rows
        row0: dict[str, np.ndarray | None] = {"item_tags": None, "item_emb_d128": None}
        if _has(batch, "item_id"):
            values, rows = _scalar(ctx, file, "item_id", batch.column("item_id"), start)
            _flag(ctx, file, item_id_violation(values, rows))
        if _has(batch, "item_tags"):
            tags, rows = _check_tags(ctx, file, batch, start)
            row0["item_tags"] = tags[0] if len(rows) and rows[0] == 0 else None
        if _has(batch, "item_emb_d128"):
            emb, rows = _check_embeddings(ctx, file, batch, "item_emb_d128", start)
            row0["item_emb_d128"] = emb[0] if len(rows) and rows[0] == 0 else None
        padding = padding_violation(row0["item_tags"], row0["item_emb_d128"])
        if len(padding.rows):
            ctx.findings.add(file, None, 0, padding.rule)
    return n_rows


def check_item_feature(ctx: Context, path: Path) -> tuple[int, np.ndarray | None]:
    """item_feature.parquet; returns (rows, item ids) (ids None when unreadable)."""
    file = ctx.name(path)
    expected = {"item_id": "int", "item_title": "str", "item_tags": "int_list",
                "likes_level": "int", "views_level": "int"}
    n_rows, ids = 0, []
    for start, batch in _iter_batches(ctx, path, expected):
        n_rows = start + batch.num_rows
        if _has(batch, "item_id"):
            values, rows = _scalar(ctx, file, "item_id", batch.column("item_id"), start)
            ids.append(values)
            if ctx.n_items is not None:
                check_range(ctx, file, "item_id", values, rows, 1, ctx.n_items,
                            f"item_id must be an item of item_info: 1..{ctx.n_items}")
        if _has(batch, "item_tags"):
            _check_tags(ctx, file, batch, start)
        for level in ("likes_level", "views_level"):
            if _has(batch, level):
                values, rows = _scalar(ctx, file, level, batch.column(level), start)
                check_range(ctx, file, level, values, rows, 0, LEVEL_MAX,
                            f"{level} must be in 0..{LEVEL_MAX}")
    if not ids:
        return n_rows, None
    item_ids = np.concatenate(ids)
    uniq, counts = np.unique(item_ids, return_counts=True)
    dup = uniq[counts > 1]
    if len(dup):
        ctx.findings.add(file, "item_id", int(np.flatnonzero(item_ids == dup[0])[1]),
                         f"item ids must be unique; {len(dup)} "
                         f"{'id repeats' if len(dup) == 1 else 'ids repeat'}, "
                         f"e.g. {dup[:ctx.findings.max_examples].tolist()}")
    if ctx.n_items is not None:
        absent = np.setdiff1d(np.arange(1, ctx.n_items + 1), uniq)
        if len(absent):
            ctx.findings.add(file, "item_id", None,
                             f"every item 1..{ctx.n_items} of item_info needs a row; "
                             f"{len(absent)} missing, e.g. {absent[:ctx.findings.max_examples].tolist()}")
    return n_rows, item_ids


def check_item_emb(ctx: Context, path: Path) -> int:
    file = ctx.name(path)
    try:
        schema = open_parquet(path).schema_arrow
    except DatasetError:
        schema = pa.schema([])  # _iter_batches reports the unreadable file
    emb_columns = [n for n in schema.names if n.startswith("item_emb")]
    if schema.names and not emb_columns:
        ctx.findings.add(file, None, None, "no embedding column (expected item_emb_d128_v1, "
                         "item_emb_d128_v2, ... of type list<float32>)")
    expected = {"item_id": "int", **{c: "float_list" for c in emb_columns}}
    n_rows = 0
    for start, batch in _iter_batches(ctx, path, expected):
        n_rows = start + batch.num_rows
        if _has(batch, "item_id") and ctx.n_items is not None:
            values, rows = _scalar(ctx, file, "item_id", batch.column("item_id"), start)
            check_range(ctx, file, "item_id", values, rows, 1, ctx.n_items,
                        f"item_id must be an item of item_info: 1..{ctx.n_items}")
        for column in emb_columns:
            if _has(batch, column):
                _check_embeddings(ctx, file, batch, column, start)
    return n_rows
