"""The challenge's parquet files -> contiguous tensors, validated before any training.

No pandas rows anywhere: pyarrow record batches -> numpy -> torch. ``item_seq`` keeps
only its last ``max_len`` positions (most recent last) and is stored as int32, filled
batch by batch, so the full 3.6M-row train split never exists as a 100-wide int64 list.
"""
from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Union

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

logger = logging.getLogger(__name__)

__all__ = [
    "DataFiles",
    "ItemTable",
    "CTRSplit",
    "find_data_files",
    "load_item_table",
    "load_split",
    "check_ids",
    "SPLIT_DIR_NAME",
    "EMBEDDING_DIM",
]

SPLIT_DIR_NAME = "MicroLens_1M_x1"
EMBEDDING_DIM = 128
TAGS_PER_ITEM = 5
SPLITS = ("train", "valid", "test")
_SPLIT_COLUMNS = ("item_id", "likes_level", "views_level", "item_seq")
_READ_ROWS = 32768  # rows per record batch while loading a split


@dataclass(frozen=True)
class DataFiles:
    """Where a dataset's files are: ``root`` holds ``split_dir`` (MicroLens_1M_x1/)."""

    root: Path
    split_dir: Path

    @property
    def item_info(self) -> Path:
        return self.split_dir / "item_info.parquet"

    def split(self, name: str) -> Path:
        if name not in SPLITS:
            raise ValueError(f"unknown split {name!r}; valid: {', '.join(SPLITS)}")
        return self.split_dir / f"{name}.parquet"


def find_data_files(data_dir: Union[str, Path]) -> DataFiles:
    """Resolve a dataset root (holding MicroLens_1M_x1/) or that folder itself."""
    path = Path(data_dir).expanduser()
    if not path.exists():
        raise FileNotFoundError(f"data_dir {path} does not exist")
    if not path.is_dir():
        raise NotADirectoryError(f"data_dir {path} is not a folder")
    if (path / SPLIT_DIR_NAME).is_dir():
        return DataFiles(root=path, split_dir=path / SPLIT_DIR_NAME)
    if any((path / f"{name}.parquet").is_file() for name in (*SPLITS, "item_info")):
        return DataFiles(root=path.parent, split_dir=path)
    raise FileNotFoundError(
        f"{path} holds neither {SPLIT_DIR_NAME}/ nor train/valid/test/item_info.parquet; "
        "pass the dataset root (the folder that holds MicroLens_1M_x1/) or that folder itself"
    )


# ---------------------------------------------------------------- list columns


def _list_column_to_numpy(column: Union[pa.Array, pa.ChunkedArray], width: Optional[int],
                          dtype, where: str, first_row: int = 0) -> np.ndarray:
    """A list column whose rows all have the same length -> (rows, width) array.

    ``width=None`` takes the first row's length. Raises naming ``where`` and the row.
    """
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks() if column.num_chunks != 1 else column.chunk(0)
    if not (pa.types.is_list(column.type) or pa.types.is_large_list(column.type)
            or pa.types.is_fixed_size_list(column.type)):
        raise TypeError(f"{where} must be a list column, found type {column.type}")
    rows = len(column)
    if column.null_count:
        row = int(np.flatnonzero(column.is_null().to_numpy(zero_copy_only=False))[0])
        raise ValueError(f"{where}, row {first_row + row}: missing (null) list")
    lengths = pa.compute.list_value_length(column).to_numpy(zero_copy_only=False)
    if width is None:
        width = int(lengths[0]) if rows else 0
    bad = np.flatnonzero(lengths != width)
    if bad.size:
        row = int(bad[0])
        raise ValueError(
            f"{where}, row {first_row + row}: list has {int(lengths[row])} values, "
            f"expected {width} (every row of this column must have the same length)"
        )
    values = column.flatten()
    if values.null_count:
        flat = int(np.flatnonzero(values.is_null().to_numpy(zero_copy_only=False))[0])
        raise ValueError(f"{where}, row {first_row + flat // max(width, 1)}: null value in the list")
    out = values.to_numpy(zero_copy_only=False).astype(dtype, copy=False)
    return out.reshape(rows, width)


# ---------------------------------------------------------------- item table


@dataclass
class ItemTable:
    """Item attributes, row i = item i, row 0 = padding (all zero).

    tags: LongTensor (N+1, 5), tag id 0 = padding; emb: FloatTensor (N+1, 128).
    """

    tags: torch.Tensor
    emb: torch.Tensor
    source: str = ""

    @property
    def num_items(self) -> int:
        """N: the number of real items (ids 1..N)."""
        return int(self.emb.shape[0]) - 1

    @property
    def tag_vocab_size(self) -> int:
        return int(self.tags.max().item()) + 1 if self.tags.numel() else 1

    def fingerprint(self) -> str:
        """First 16 hex digits of a sha256 over the tags and embedding bytes: a run can
        record it and a later prediction can check it is given the same table."""
        digest = hashlib.sha256()
        for tensor in (self.tags, self.emb):
            array = tensor.detach().cpu().contiguous().numpy()
            digest.update(str((array.dtype.str, array.shape)).encode())
            digest.update(array.tobytes())
        return digest.hexdigest()[:16]


def _check_embedding_array(emb: np.ndarray, where: str) -> np.ndarray:
    if emb.ndim != 2 or emb.shape[1] != EMBEDDING_DIM:
        raise ValueError(
            f"{where}: embedding table has shape {tuple(emb.shape)}; expected (N+1, {EMBEDDING_DIM}) "
            f"with row i = item i and row 0 = padding"
        )
    if emb.shape[0] < 2:
        raise ValueError(f"{where}: embedding table has {emb.shape[0]} rows; expected N+1 >= 2")
    finite = np.isfinite(emb)
    if not finite.all():
        row, col = (int(v) for v in np.argwhere(~finite)[0])
        raise ValueError(f"{where}: row {row} (item {row}), dimension {col} is {emb[row, col]} "
                         "(embeddings must be finite: no NaN or inf)")
    if np.any(emb[0] != 0):
        raise ValueError(f"{where}: row 0 is the padding item and must be all zeros "
                         f"(found max |value| {float(np.abs(emb[0]).max()):.3g})")
    return emb


def _read_item_info(path: Path, need_tags: bool) -> tuple[Optional[np.ndarray], Optional[np.ndarray]]:
    """(tags, emb) of an item_info.parquet file; either may be None when absent."""
    if not path.is_file():
        raise FileNotFoundError(f"item_info file {path} does not exist")
    schema = pq.read_schema(path)
    names = set(schema.names)
    if need_tags and "item_tags" not in names:
        raise ValueError(f"{path}: column item_tags is missing (found: {', '.join(schema.names)})")
    columns = [c for c in ("item_id", "item_tags", "item_emb_d128") if c in names]
    table = pq.read_table(path, columns=columns)
    if "item_id" in names:
        ids = table.column("item_id").to_numpy(zero_copy_only=False)
        wrong = np.flatnonzero(ids != np.arange(len(ids)))
        if wrong.size:
            row = int(wrong[0])
            raise ValueError(f"{path}: column item_id, row {row} holds {ids[row]}; row i must be "
                             "item i (row 0 = the padding item)")
    tags = emb = None
    if "item_tags" in names:
        tags = _list_column_to_numpy(table.column("item_tags"), TAGS_PER_ITEM, np.int64,
                                     f"{path}: column item_tags")
        if tags.size and tags.min() < 0:
            row = int(np.argwhere(tags < 0)[0][0])
            raise ValueError(f"{path}: column item_tags, row {row}: negative tag id {tags[row].min()}")
        if tags.shape[0] and np.any(tags[0] != 0):
            raise ValueError(f"{path}: column item_tags, row 0 (padding item) must be all zeros")
    if "item_emb_d128" in names:
        where = f"{path}: column item_emb_d128"
        emb = _list_column_to_numpy(table.column("item_emb_d128"), None, np.float32, where)
        if emb.shape[0] and emb.shape[1] != EMBEDDING_DIM:
            raise ValueError(f"{where} has width {emb.shape[1]}; expected {EMBEDDING_DIM}")
    return tags, emb


def load_item_table(data_dir: Union[str, Path],
                    item_info: Union[None, str, Path, np.ndarray, torch.Tensor] = None) -> ItemTable:
    """Item tags and 128-d embeddings, validated.

    item_info: None = the dataset's own MicroLens_1M_x1/item_info.parquet; a path to an
    item_info.parquet (its item_emb_d128, and its item_tags when it has them); or an
    (N+1, 128) float array replacing only the embedding (tags from the dataset).
    Checks: width 128, finite, row 0 all zero, row count equal to the dataset's items.
    Whether every id in the data has a row is :func:`check_ids`' job.
    """
    files = find_data_files(data_dir)
    if item_info is None:
        tags, emb = _read_item_info(files.item_info, need_tags=True)
        if emb is None:
            raise ValueError(f"{files.item_info}: column item_emb_d128 is missing")
        source = str(files.item_info)
        _check_embedding_array(emb, f"{files.item_info}: column item_emb_d128")
    elif isinstance(item_info, (str, Path)):
        path = Path(item_info).expanduser()
        tags, emb = _read_item_info(path, need_tags=False)
        if emb is None:
            raise ValueError(f"{path}: column item_emb_d128 is missing")
        _check_embedding_array(emb, f"{path}: column item_emb_d128")
        if tags is None:
            tags, _ = _read_item_info(files.item_info, need_tags=True)
        source = str(path)
    elif isinstance(item_info, (np.ndarray, torch.Tensor)):
        array = item_info.detach().cpu().numpy() if isinstance(item_info, torch.Tensor) else item_info
        if not np.issubdtype(array.dtype, np.floating):
            raise TypeError(f"item_info array must hold floats, got dtype {array.dtype}")
        emb = _check_embedding_array(np.asarray(array, dtype=np.float32), "item_info array")
        tags, _ = _read_item_info(files.item_info, need_tags=True)
        source = f"array{tuple(array.shape)}"
    else:
        raise TypeError("item_info must be None, a path to item_info.parquet or an (N+1, 128) float "
                        f"array, got {type(item_info).__name__}")
    if tags.shape[0] != emb.shape[0]:
        raise ValueError(
            f"{source}: embedding table has {emb.shape[0]} rows but {files.item_info} describes "
            f"{tags.shape[0]} rows (N+1 = {tags.shape[0]}: row i = item i, row 0 = padding)"
        )
    # np.array copies: arrow buffers are read-only and the table must own its memory
    return ItemTable(tags=torch.from_numpy(np.array(tags, dtype=np.int64, order="C")),
                     emb=torch.from_numpy(np.array(emb, dtype=np.float32, order="C")),
                     source=source)


# ---------------------------------------------------------------- splits


@dataclass
class CTRSplit:
    """One split as contiguous tensors (row order = file order)."""

    item_id: torch.Tensor  # (n,) int64
    likes_level: torch.Tensor  # (n,) int64
    views_level: torch.Tensor  # (n,) int64
    item_seq: torch.Tensor  # (n, K) int32, K = min(L in file, max_len), most recent last
    label: Optional[torch.Tensor]  # (n,) float32, None for an unlabelled test split
    path: str = ""
    seq_len_in_file: int = 0

    def __len__(self) -> int:
        return int(self.item_id.shape[0])

    @property
    def max_len(self) -> int:
        return int(self.item_seq.shape[1])

    def batch(self, indices) -> dict[str, torch.Tensor]:
        """Rows ``indices`` (tensor, array, list or slice) as model inputs (item_seq long)."""
        if not isinstance(indices, slice):
            indices = torch.as_tensor(indices, dtype=torch.long)
        out = {
            "item_id": self.item_id[indices],
            "likes_level": self.likes_level[indices],
            "views_level": self.views_level[indices],
            "item_seq": self.item_seq[indices].long(),
        }
        if self.label is not None:
            out["label"] = self.label[indices]
        return out


def load_split(data_dir: Union[str, Path], split: str, max_len: int = 64) -> CTRSplit:
    """Read ``split`` ("train", "valid" or "test") into a :class:`CTRSplit`.

    Keeps the last ``max_len`` history positions. Labels are required for train and
    valid and must be 0 or 1; a test file's label column is read when present.
    """
    if isinstance(max_len, bool) or not isinstance(max_len, int) or max_len < 1:
        raise ValueError(f"max_len must be a positive integer, got {max_len!r}")
    path = find_data_files(data_dir).split(split)
    if not path.is_file():
        raise FileNotFoundError(f"{split} split file {path} does not exist")
    # pre_buffer=False: stream pages instead of buffering whole row groups (a 1M-row
    # group of a 100-wide history is GBs); peak memory stays near the output arrays
    pfile = pq.ParquetFile(path, pre_buffer=False)
    names = pfile.schema_arrow.names
    missing = [c for c in _SPLIT_COLUMNS if c not in names]
    if split != "test" and "label" not in names:
        missing.append("label")
    if missing:
        raise ValueError(f"{path}: missing column(s) {', '.join(missing)} (found: {', '.join(names)})")
    has_label = "label" in names
    n = pfile.metadata.num_rows
    columns = list(_SPLIT_COLUMNS) + (["label"] if has_label else [])
    scalars = {c: np.empty(n, dtype=np.int64) for c in ("item_id", "likes_level", "views_level")}
    label = np.empty(n, dtype=np.float32) if has_label else None
    seq: Optional[np.ndarray] = None
    width = None
    row = 0
    for record_batch in pfile.iter_batches(batch_size=_READ_ROWS, columns=columns):
        m = record_batch.num_rows
        for name in scalars:
            col = record_batch.column(name)
            if col.null_count:
                bad = int(np.flatnonzero(col.is_null().to_numpy(zero_copy_only=False))[0])
                raise ValueError(f"{path}: column {name}, row {row + bad}: missing value")
            scalars[name][row:row + m] = col.to_numpy(zero_copy_only=False)
        hist = _list_column_to_numpy(record_batch.column("item_seq"), width, np.int64,
                                     f"{path}: column item_seq", first_row=row)
        if seq is None:
            width = hist.shape[1]
            seq = np.empty((n, min(width, max_len)), dtype=np.int32)
        seq[row:row + m] = hist[:, hist.shape[1] - seq.shape[1]:]
        if label is not None:
            col = record_batch.column("label")
            if col.null_count:
                bad = int(np.flatnonzero(col.is_null().to_numpy(zero_copy_only=False))[0])
                raise ValueError(f"{path}: column label, row {row + bad}: missing value")
            values = col.to_numpy(zero_copy_only=False)
            bad = np.flatnonzero((values != 0) & (values != 1))
            if bad.size:
                raise ValueError(f"{path}: column label, row {row + int(bad[0])} holds "
                                 f"{values[bad[0]].item()!r}; labels must be 0 or 1")
            label[row:row + m] = values
        row += m
    pa.default_memory_pool().release_unused()
    if seq is None:  # empty file
        seq = np.zeros((0, 0), dtype=np.int32)
        width = 0
    logger.info("loaded %s: %d rows, history %d of %d positions", path, n, seq.shape[1], width)
    return CTRSplit(
        item_id=torch.from_numpy(scalars["item_id"]),
        likes_level=torch.from_numpy(scalars["likes_level"]),
        views_level=torch.from_numpy(scalars["views_level"]),
        item_seq=torch.from_numpy(seq),
        label=torch.from_numpy(label) if label is not None else None,
        path=str(path),
        seq_len_in_file=int(width),
    )


def check_ids(split: CTRSplit, table: ItemTable, num_levels: int = 11) -> None:
    """Every id in the split has a row in ``table``; levels and labels are in range.

    item_id must be in 1..N, item_seq in 0..N (0 = padding), likes/views levels in
    0..num_levels-1, labels 0 or 1. Raises ValueError naming file, column and row.
    """
    n_items = table.num_items
    where = split.path or "split"

    def first_bad(mask: torch.Tensor) -> int:
        return int(torch.nonzero(mask.reshape(mask.shape[0], -1).any(dim=1))[0, 0])

    if len(split) == 0:
        return
    ids = split.item_id
    bad = (ids < 1) | (ids > n_items)
    if bool(bad.any()):
        r = first_bad(bad)
        raise ValueError(
            f"{where}: column item_id, row {r}: item {int(ids[r])} has no row in the item table "
            f"({table.source}: {n_items + 1} rows, valid target ids 1..{n_items})"
        )
    if split.item_seq.numel():
        seq = split.item_seq
        bad = (seq < 0) | (seq > n_items)
        if bool(bad.any()):
            r = first_bad(bad)
            value = int(seq[r][bad[r]][0])
            raise ValueError(
                f"{where}: column item_seq, row {r}: item {value} has no row in the item table "
                f"({table.source}: {n_items + 1} rows, valid ids 0..{n_items}, 0 = padding)"
            )
    for name in ("likes_level", "views_level"):
        values = getattr(split, name)
        bad = (values < 0) | (values >= num_levels)
        if bool(bad.any()):
            r = first_bad(bad)
            raise ValueError(f"{where}: column {name}, row {r} holds {int(values[r])}; "
                             f"valid levels are 0..{num_levels - 1}")
    if split.label is not None:
        bad = (split.label != 0) & (split.label != 1)
        if bool(bad.any()):
            r = first_bad(bad)
            raise ValueError(f"{where}: column label, row {r} holds {float(split.label[r])}; "
                             "labels must be 0 or 1")
