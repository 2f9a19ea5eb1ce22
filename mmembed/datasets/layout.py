"""Where the files of a MicroLens MM-CTR dataset live, and how to open them safely.

A dataset ROOT holds ``MicroLens_1M_x1/{train,valid,test,item_info}.parquet`` beside
``item_feature.parquet``, ``item_emb.parquet``, ``item_seq.parquet`` and the cover images
(``item_images/``, ``item_images.zip`` or ``item_images.rar``). Users may pass either ROOT
or ``ROOT/MicroLens_1M_x1``; :func:`find_layout` resolves both.

Every reading error of this package is a :class:`DatasetError` (a ``ValueError``) whose
message names the file and says what would be valid; a missing file raises
:class:`MissingFileError`, which is also a ``FileNotFoundError``.
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

logger = logging.getLogger(__name__)

X1_DIRNAME = "MicroLens_1M_x1"
SPLITS = ("train", "valid", "test")
IMAGE_DIRNAME = "item_images"
CACHE_DIRNAME = ".mmembed_cache"

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


@dataclass(frozen=True)
class DatasetLayout:
    """Resolved paths of one dataset. Each file path is set whether or not it exists;
    :meth:`has` says which exist and :meth:`require` raises a clear error for a missing one.
    Image sources are ``None`` when absent."""

    root: Path
    x1_dir: Path
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
    folder = root / IMAGE_DIRNAME
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

    Raises :class:`MissingFileError` when ``data_dir`` does not exist or holds neither
    layout.
    """
    data_dir = Path(data_dir).expanduser()
    if data_dir.exists() and not data_dir.is_dir():
        raise MissingFileError(f"{data_dir}: not a directory; pass the dataset folder "
                               f"({EXPECTED_LAYOUT})")
    if not data_dir.is_dir():
        raise MissingFileError(f"{data_dir}: data directory not found ({EXPECTED_LAYOUT})")
    data_dir = data_dir.resolve()
    if (data_dir / X1_DIRNAME).is_dir() or (data_dir / "item_feature.parquet").is_file():
        root, x1_dir = data_dir, data_dir / X1_DIRNAME
    elif (data_dir / "train.parquet").is_file() or (data_dir / "item_info.parquet").is_file():
        root, x1_dir = data_dir.parent, data_dir
    else:
        raise MissingFileError(
            f"{data_dir}: holds neither {X1_DIRNAME}/ nor item_feature.parquet nor "
            f"train.parquet/item_info.parquet ({EXPECTED_LAYOUT})"
        )

    def root_file(name: str) -> Path:
        # Files normally in ROOT; accept them inside the x1 folder too when ROOT lacks them.
        path = root / name
        if not path.is_file() and (x1_dir / name).is_file():
            return x1_dir / name
        return path

    images_dir, images_zip, images_rar = _find_images(root)
    layout = DatasetLayout(
        root=root, x1_dir=x1_dir,
        train=x1_dir / "train.parquet", valid=x1_dir / "valid.parquet",
        test=x1_dir / "test.parquet", item_info=x1_dir / "item_info.parquet",
        item_feature=root_file("item_feature.parquet"), item_emb=root_file("item_emb.parquet"),
        item_seq=root_file("item_seq.parquet"),
        images_dir=images_dir, images_zip=images_zip, images_rar=images_rar,
    )
    logger.debug("dataset layout %s: %s", root, layout.present())
    return layout


# ---------------------------------------------------------------- parquet helpers

# Logical column kinds of the layout and the words used for them in error messages.
KIND_NAMES = {
    "int": "int64",
    "str": "string",
    "int_list": "list<int64>",
    "float_list": "list<float32>",
}


def open_parquet(path: Path) -> pq.ParquetFile:
    """Open ``path`` as parquet, turning pyarrow's errors into clear ones naming the file."""
    if not path.is_file():
        raise MissingFileError(f"{path}: file not found ({EXPECTED_LAYOUT})")
    try:
        return pq.ParquetFile(path)
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


def _as_array(values: pa.Array | pa.ChunkedArray) -> pa.Array:
    if isinstance(values, pa.ChunkedArray):
        return values.combine_chunks() if values.num_chunks != 1 else values.chunk(0)
    return values


def first_null_row(values: pa.Array | pa.ChunkedArray) -> int | None:
    """Index of the first null in ``values``, or None."""
    if values.null_count == 0:
        return None
    mask = _as_array(values).is_null().to_numpy(zero_copy_only=False)
    return int(mask.argmax())


def list_lengths(values: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """Length of each list in a list column (nulls count as length 0)."""
    return pc.list_value_length(values).fill_null(0).to_numpy(zero_copy_only=False)


def list_to_matrix(values: pa.Array | pa.ChunkedArray, path: Path, column: str,
                   width: int | None = None, row_offset: int = 0, fixed: bool = False,
                   dtype: str = "int64") -> np.ndarray:
    """A list column of equal-length lists as an (n, width) numpy array, without per-row
    Python objects. ``width`` None takes the first row's length; ``fixed`` says ``width``
    is the layout's own (5 tags), not one seen in the file. Null lists, null values or
    other lengths raise :class:`DatasetError` naming file, column and row (``row_offset``
    + index inside ``values``)."""
    arr = _as_array(values)
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


def scalar_to_numpy(values: pa.Array | pa.ChunkedArray, path: Path, column: str,
                    row_offset: int = 0) -> np.ndarray:
    """An integer column as an int64 numpy array; a null raises :class:`DatasetError`."""
    null_row = first_null_row(values)
    if null_row is not None:
        raise DatasetError(f"{path}: column {column!r} row {row_offset + null_row}: "
                           f"null value (expected an integer)")
    return np.asarray(_as_array(values).to_numpy(zero_copy_only=False), dtype=np.int64)
