"""The challenge's file contract, written once: layout, parquet columns, item_info rules,
atomic writes and fingerprints.

The judge (ctr_eval) owns the contract; mmembed imports this module and never writes a
rule of its own. Dependencies: numpy and pyarrow only.

A dataset ROOT holds ``MicroLens_1M_x1/{train,valid,test,item_info}.parquet`` beside
``item_feature.parquet``, ``item_emb.parquet``, ``item_seq.parquet`` and the cover images
(``item_images/``, ``item_images.zip`` or ``item_images.rar``). Users may pass either ROOT
or ``ROOT/MicroLens_1M_x1``; :func:`find_layout` resolves both.

``item_info.parquet``: row i holds item i, row 0 is the all-zero padding item; columns
``item_id`` int64, ``item_tags`` list of 5 int64 (0 = padding tag), ``item_emb_d128`` list
of 128 float32.

Every reading error is a :class:`DatasetError` (a ``ValueError``) whose message names the
file, column and row and says what would be valid; a missing file raises
:class:`MissingFileError`, which is also a ``FileNotFoundError``.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

logger = logging.getLogger(__name__)

SPLIT_DIR_NAME = "MicroLens_1M_x1"
SPLITS = ("train", "valid", "test")
IMAGE_DIRNAME = "item_images"
CACHE_DIRNAME = ".mmembed_cache"  # derived files beside the data (e.g. unpacked covers)
EMBEDDING_DIM = 128
TAGS_PER_ITEM = 5
LEVEL_MAX = 10  # likes_level / views_level are 0..10
ITEM_INFO_COLUMNS = {"item_id": "int", "item_tags": "int_list", "item_emb_d128": "float_list"}

EXPECTED_LAYOUT = (
    "expected layout: ROOT/MicroLens_1M_x1/{train,valid,test,item_info}.parquet, "
    "ROOT/item_feature.parquet, ROOT/item_emb.parquet, ROOT/item_seq.parquet and "
    "ROOT/item_images/ (or item_images.zip / item_images.rar); pass ROOT or "
    "ROOT/MicroLens_1M_x1 as data_dir"
)


class DatasetError(ValueError):
    """A dataset file is missing, unreadable or breaks the MicroLens layout."""


class MissingFileError(DatasetError, FileNotFoundError):
    """A file or folder the layout needs does not exist."""


# ---------------------------------------------------------------- layout


@dataclass(frozen=True)
class DatasetLayout:
    """Resolved paths of one dataset. Each file path is set whether or not it exists;
    :meth:`has` says which exist and :meth:`require` raises a clear error for a missing one.
    Image sources are ``None`` when absent."""

    root: Path
    split_dir: Path
    train: Path
    valid: Path
    test: Path
    item_info: Path
    item_feature: Path
    item_emb: Path
    item_seq: Path
    images_dir: Path | None
    images_zip: Path | None
    images_rar: Path | None

    FILE_NAMES = ("train", "valid", "test", "item_info", "item_feature", "item_emb", "item_seq")

    @property
    def cache_dir(self) -> Path:
        """Folder beside the data for derived files (e.g. images extracted from a RAR)."""
        return self.root / CACHE_DIRNAME

    @property
    def image_source(self) -> Path | None:
        """The cover-image source used by default: folder, then zip, then rar."""
        return self.images_dir or self.images_zip or self.images_rar

    def path(self, name: str) -> Path:
        if name not in self.FILE_NAMES:
            raise ValueError(f"unknown dataset file {name!r}; valid: {', '.join(self.FILE_NAMES)}")
        return getattr(self, name)

    def split(self, name: str) -> Path:
        """The parquet file of split ``name`` (train, valid or test)."""
        if name not in SPLITS:
            raise ValueError(f"unknown split {name!r}; valid: {', '.join(SPLITS)}")
        return self.path(name)

    def has(self, name: str) -> bool:
        return self.path(name).is_file()

    def require(self, name: str) -> Path:
        """The path of file ``name``; :class:`MissingFileError` when it does not exist."""
        path = self.path(name)
        if not path.is_file():
            raise MissingFileError(f"{path}: file not found ({EXPECTED_LAYOUT})")
        return path

    def present(self) -> dict[str, bool]:
        return {name: self.has(name) for name in self.FILE_NAMES}


def _find_images(root: Path) -> tuple[Path | None, Path | None, Path | None]:
    folder: Path | None = root / IMAGE_DIRNAME
    if folder.is_dir():
        # Unpacking item_images.zip by hand often yields item_images/item_images/.
        nested = folder / IMAGE_DIRNAME
        if nested.is_dir() and not any(folder.glob("*.jpg")):
            folder = nested
    else:
        folder = None
    zip_path = root / f"{IMAGE_DIRNAME}.zip"
    rar_path = root / f"{IMAGE_DIRNAME}.rar"
    return (folder, zip_path if zip_path.is_file() else None,
            rar_path if rar_path.is_file() else None)


def find_layout(data_dir: str | os.PathLike) -> DatasetLayout:
    """Resolve ``data_dir`` (ROOT or ROOT/MicroLens_1M_x1) into a :class:`DatasetLayout`.

    ROOT is recognised by its MicroLens_1M_x1/ folder or its item_feature.parquet; the
    split folder by any of train/valid/test/item_info.parquet. Raises
    :class:`MissingFileError` when ``data_dir`` does not exist or holds neither.
    """
    data_dir = Path(data_dir).expanduser()
    if data_dir.exists() and not data_dir.is_dir():
        raise MissingFileError(f"{data_dir}: not a directory; pass the dataset folder "
                               f"({EXPECTED_LAYOUT})")
    if not data_dir.is_dir():
        raise MissingFileError(f"{data_dir}: data directory not found ({EXPECTED_LAYOUT})")
    data_dir = data_dir.resolve()
    if (data_dir / SPLIT_DIR_NAME).is_dir() or (data_dir / "item_feature.parquet").is_file():
        root, split_dir = data_dir, data_dir / SPLIT_DIR_NAME
    elif any((data_dir / f"{name}.parquet").is_file() for name in (*SPLITS, "item_info")):
        root, split_dir = data_dir.parent, data_dir
    else:
        raise MissingFileError(
            f"{data_dir}: holds neither {SPLIT_DIR_NAME}/ nor item_feature.parquet nor "
            f"train/valid/test/item_info.parquet ({EXPECTED_LAYOUT})"
        )

    def root_file(name: str) -> Path:
        # Files normally in ROOT; accept them inside the split folder when ROOT lacks them.
        path = root / name
        if not path.is_file() and (split_dir / name).is_file():
            return split_dir / name
        return path

    images_dir, images_zip, images_rar = _find_images(root)
    layout = DatasetLayout(
        root=root, split_dir=split_dir,
        train=split_dir / "train.parquet", valid=split_dir / "valid.parquet",
        test=split_dir / "test.parquet", item_info=split_dir / "item_info.parquet",
        item_feature=root_file("item_feature.parquet"), item_emb=root_file("item_emb.parquet"),
        item_seq=root_file("item_seq.parquet"),
        images_dir=images_dir, images_zip=images_zip, images_rar=images_rar,
    )
    logger.debug("dataset layout %s: %s", root, layout.present())
    return layout


# ---------------------------------------------------------------- parquet columns

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


# ---------------------------------------------------------------- item_info rules


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


# ---------------------------------------------------------------- atomic writes


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` on success.

    A crash or exception leaves ``path`` untouched (the old file, or nothing), never a
    half-written file. The temporary file lives in the same directory so the final
    ``os.replace`` is atomic on POSIX file systems; the result gets the usual umask mode
    (mkstemp alone would leave 0600).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        if tmp_path.exists():
            os.chmod(tmp_path, 0o666 & ~_umask())
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_json(path: str | os.PathLike, obj: Any) -> Path:
    """Write ``obj`` as indented JSON, atomically."""
    path = Path(path)
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2) + "\n", encoding="utf-8")
    return path


# ---------------------------------------------------------------- fingerprints


def item_table_fingerprint(tags: np.ndarray, emb: np.ndarray) -> str:
    """First 16 hex digits of a sha256 over the item table's bytes (tags as int64,
    embeddings as float32): ties a run to the exact table it was trained with."""
    digest = hashlib.sha256()
    digest.update(np.ascontiguousarray(np.asarray(tags), dtype=np.int64).tobytes())
    digest.update(np.ascontiguousarray(np.asarray(emb), dtype=np.float32).tobytes())
    return digest.hexdigest()[:16]
