"""The challenge's parquet files -> contiguous tensors, validated before any training.

No pandas rows anywhere: pyarrow record batches -> numpy -> torch. ``item_seq`` keeps
only its last ``max_len`` positions (most recent last) and is stored as int32, filled
batch by batch, so the full 3.6M-row train split never exists as a 100-wide int64 list.
"""
from __future__ import annotations

import dataclasses
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Union

import numpy as np
import pyarrow as pa
import torch

from ctr_eval.checks import check_positive_int
from ctr_eval.format import (ITEM_CODES_FILE, ITEM_INFO_COLUMNS, DatasetError, MissingFileError,
                             check_columns, check_embedding_table, check_item_codes, find_layout,
                             item_table_fingerprint, iter_batches, list_to_matrix, open_parquet,
                             read_item_codes, read_item_info, read_item_levels, scalar_to_numpy)

logger = logging.getLogger(__name__)

__all__ = [
    "ItemTable",
    "CTRSplit",
    "load_item_table",
    "add_task2_features",
    "load_split",
    "check_ids",
]

_SPLIT_COLUMNS = {"item_id": "int", "likes_level": "int", "views_level": "int", "item_seq": "int_list"}
_READ_ROWS = 32768  # rows per record batch while loading a split


# ---------------------------------------------------------------- item table


@dataclass
class ItemTable:
    """Item attributes, row i = item i, row 0 = padding (all zero), and the sizes of the
    other tables a model is built with.

    tags: LongTensor (N+1, 5), tag id 0 = padding; emb: FloatTensor (N+1, 128).
    Task 2 features (None / 0 unless the config asks; :func:`add_task2_features`):
    codes: LongTensor (N+1, L) semantic-ID codes, -1 in row 0; levels: LongTensor (N+1, 2)
    each item's [likes_level, views_level], row 0 zero; user_rows: rows of the user_id
    embedding (row 0 = unknown user).
    """

    tags: torch.Tensor
    emb: torch.Tensor
    source: str = ""
    codes: Optional[torch.Tensor] = None
    levels: Optional[torch.Tensor] = None
    user_rows: int = 0

    @property
    def num_items(self) -> int:
        """N: the number of real items (ids 1..N)."""
        return int(self.emb.shape[0]) - 1

    @property
    def tag_vocab_size(self) -> int:
        return int(self.tags.max().item()) + 1 if self.tags.numel() else 1

    def fingerprint(self) -> str:
        """16 hex digits of a sha256 over the tables' bytes (tags and embeddings, then the
        Task 2 tables present): a run records it and a later prediction checks it is given
        the same tables. A table without Task 2 features keeps the fingerprint it had
        before they existed."""
        def array(t: Optional[torch.Tensor]) -> Optional[np.ndarray]:
            return None if t is None else t.detach().cpu().numpy()

        users = np.array([self.user_rows]) if self.user_rows else None
        return item_table_fingerprint(array(self.tags), array(self.emb), array(self.codes),
                                      array(self.levels), users)

    def to_dict(self) -> dict:
        """Tensors and sizes, for ``torch.save`` into a run dir (:meth:`from_dict` reads it)."""
        out = {"tags": self.tags.cpu(), "emb": self.emb.cpu(), "fingerprint": self.fingerprint()}
        for name in ("codes", "levels"):
            if getattr(self, name) is not None:
                out[name] = getattr(self, name).cpu()
        if self.user_rows:
            out["user_rows"] = self.user_rows
        return out

    @classmethod
    def from_dict(cls, saved: dict, source: str = "") -> "ItemTable":
        return cls(tags=saved["tags"], emb=saved["emb"], source=source, codes=saved.get("codes"),
                   levels=saved.get("levels"), user_rows=int(saved.get("user_rows", 0)))


def load_item_table(data_dir: Union[str, Path],
                    item_info: Union[None, str, Path, np.ndarray, torch.Tensor] = None) -> ItemTable:
    """Item tags and 128-d embeddings, validated.

    item_info: None = the dataset's own MicroLens_1M_x1/item_info.parquet; a path to an
    item_info.parquet (its item_emb_d128, and its item_tags when it has them); or an
    (N+1, 128) float array replacing only the embedding (tags from the dataset).
    Checks: width 128, finite, row 0 all zero, row count equal to the dataset's items.
    Whether every id in the data has a row is :func:`check_ids`' job.
    """
    dataset_info = find_layout(data_dir).require("item_info")
    if item_info is None:
        columns = read_item_info(dataset_info)
        tags, emb, source = columns["item_tags"], columns["item_emb_d128"], str(dataset_info)
        check_embedding_table(emb, f"{dataset_info}: column 'item_emb_d128'")
    elif isinstance(item_info, (str, os.PathLike)):
        path = Path(item_info).expanduser()
        names = open_parquet(path).schema_arrow.names
        own_tags = "item_tags" in names
        columns = read_item_info(path, tuple(c for c in ITEM_INFO_COLUMNS if c in names or c == "item_emb_d128"))
        emb, source = columns["item_emb_d128"], str(path)
        check_embedding_table(emb, f"{path}: column 'item_emb_d128'")
        tags = columns["item_tags"] if own_tags else read_item_info(dataset_info, ("item_tags",))["item_tags"]
    elif isinstance(item_info, (np.ndarray, torch.Tensor)):
        array = item_info.detach().cpu().numpy() if isinstance(item_info, torch.Tensor) else item_info
        if not np.issubdtype(array.dtype, np.floating):
            raise TypeError(f"item_info array must hold floats, got dtype {array.dtype}")
        emb = check_embedding_table(np.asarray(array, dtype=np.float32), "item_info array")
        tags = read_item_info(dataset_info, ("item_tags",))["item_tags"]
        source = f"array{tuple(array.shape)}"
    else:
        raise TypeError("item_info must be None, a path to item_info.parquet or an (N+1, 128) float "
                        f"array, got {type(item_info).__name__}")
    if tags.shape[0] != emb.shape[0]:
        raise ValueError(
            f"{source}: embedding table has {emb.shape[0]} rows but {dataset_info} describes "
            f"{tags.shape[0]} rows (N+1 = {tags.shape[0]}: row i = item i, row 0 = padding)"
        )
    # np.array copies: arrow buffers are read-only and the table must own its memory
    return ItemTable(tags=torch.from_numpy(np.array(tags, dtype=np.int64, order="C")),
                     emb=torch.from_numpy(np.array(emb, dtype=np.float32, order="C")),
                     source=source)


def add_task2_features(table: ItemTable, data_dir: Union[str, Path], config,
                       train: Optional["CTRSplit"] = None,
                       codes: Union[None, str, Path, np.ndarray] = None,
                       item_info: Union[None, str, Path, np.ndarray, torch.Tensor] = None) -> ItemTable:
    """``table`` with the Task 2 features ``config`` turns on, read and checked.

    codes: (N+1, L) item codes (row 0 -1), or a path to an item_codes.parquet; None looks
    beside ``item_info`` when that is a path, then in the dataset's MicroLens_1M_x1/.
    Item levels come from the dataset's item_feature.parquet. The user_id table has a row
    per user id up to the largest in ``train`` (ids above it, in valid or test, share the
    unknown row 0), or ``config.user_id_buckets`` + 1 rows when hashing.
    """
    rows = table.num_items + 1
    code_table = levels = None
    user_rows = 0
    if config.item_codes:
        code_table = _item_codes(data_dir, rows, codes, item_info)
    elif codes is not None:
        raise ValueError("codes were given but the config does not use them: set item_codes=True "
                         "(Task 2 mode) or leave codes out")
    if config.item_levels:
        levels = read_item_levels(find_layout(data_dir).require("item_feature"), rows)
    if config.user_id:
        if train is None or train.user_id is None:
            raise ValueError(f"user_id=True needs a user_id column in the train split "
                             f"({getattr(train, 'path', data_dir)}); it has none")
        if config.user_id_buckets:
            user_rows = config.user_id_buckets + 1
        else:
            user_rows = int(train.user_id.max()) + 1 if len(train) else 1
    return dataclasses.replace(table, codes=None if code_table is None else torch.from_numpy(code_table),
                               levels=None if levels is None else torch.from_numpy(levels),
                               user_rows=user_rows)


def _item_codes(data_dir, rows: int, given, item_info) -> np.ndarray:
    if isinstance(given, (np.ndarray, torch.Tensor)):
        array = given.detach().cpu().numpy() if isinstance(given, torch.Tensor) else np.asarray(given)
        if not np.issubdtype(array.dtype, np.integer) or array.shape[:1] != (rows,):
            raise ValueError(f"codes array must be integer (N+1, L) = ({rows}, L), "
                             f"got {array.dtype} {array.shape}")
        check_item_codes(array, "codes array")
        return array.astype(np.int64)
    if given is not None:
        return read_item_codes(Path(given).expanduser(), rows).copy()  # writable, for torch
    candidates = []
    if isinstance(item_info, (str, os.PathLike)):
        candidates.append(Path(item_info).expanduser().parent / ITEM_CODES_FILE)
    candidates.append(find_layout(data_dir).item_info.parent / ITEM_CODES_FILE)
    for path in candidates:
        if path.is_file():
            return read_item_codes(path, rows).copy()
    raise MissingFileError(
        f"item_codes=True needs semantic-ID codes, but none of {[str(p) for p in candidates]} exists: "
        "pass codes=PATH (an item_codes.parquet; mmembed writes one beside item_info.parquet "
        "when the fusion head makes codes, e.g. rq)")


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
    user_id: Optional[torch.Tensor] = None  # (n,) int64 when the file has the column

    def __len__(self) -> int:
        return int(self.item_id.shape[0])

    def subset(self, rows: int, seed: int = 0) -> "CTRSplit":
        """``rows`` rows drawn at random without replacement (numpy's default_rng(seed)),
        kept in file order: the same rows for every table and training seed."""
        check_positive_int("train_rows", rows)
        if rows >= len(self):
            return self
        keep = torch.from_numpy(np.sort(np.random.default_rng(seed).choice(len(self), rows, replace=False)))
        return dataclasses.replace(
            self, item_id=self.item_id[keep], likes_level=self.likes_level[keep],
            views_level=self.views_level[keep], item_seq=self.item_seq[keep],
            label=None if self.label is None else self.label[keep],
            user_id=None if self.user_id is None else self.user_id[keep])

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
        if self.user_id is not None:
            out["user_id"] = self.user_id[indices]
        return out


def load_split(data_dir: Union[str, Path], split: str, max_len: int = 64) -> CTRSplit:
    """Read ``split`` ("train", "valid" or "test") into a :class:`CTRSplit`.

    Keeps the last ``max_len`` history positions. Labels are required for train and
    valid and must be 0 or 1; a test file's label column is read when present.
    """
    check_positive_int("max_len", max_len)
    path = find_layout(data_dir).split(split)
    if not path.is_file():
        raise MissingFileError(f"{path}: the {split} split file does not exist")
    # pre_buffer=False: stream pages instead of buffering whole row groups (a 1M-row
    # group of a 100-wide history is GBs); peak memory stays near the output arrays
    pfile = open_parquet(path, pre_buffer=False)
    expected = dict(_SPLIT_COLUMNS)
    has_label = "label" in pfile.schema_arrow.names
    if split != "test" or has_label:
        expected["label"] = "int"
    if "user_id" in pfile.schema_arrow.names:  # read when there (Task 2's user_id feature)
        expected["user_id"] = "int"
    check_columns(path, pfile.schema_arrow, expected)
    n = pfile.metadata.num_rows
    scalars = {c: np.empty(n, dtype=np.int64) for c in expected if c in ("item_id", "likes_level",
                                                                          "views_level", "user_id")}
    label = np.empty(n, dtype=np.float32) if has_label else None
    seq: Optional[np.ndarray] = None
    width = None
    for row, record_batch in iter_batches(pfile, path, _READ_ROWS, list(expected)):
        m = record_batch.num_rows
        for name in scalars:
            scalars[name][row:row + m] = scalar_to_numpy(record_batch.column(name), path, name, row)
        hist = list_to_matrix(record_batch.column("item_seq"), path, "item_seq", width, row)
        if seq is None:
            width = hist.shape[1]
            seq = np.empty((n, min(width, max_len)), dtype=np.int32)
        seq[row:row + m] = hist[:, hist.shape[1] - seq.shape[1]:]
        if label is not None:
            label[row:row + m] = _labels(record_batch.column("label"), path, row)
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
        user_id=torch.from_numpy(scalars["user_id"]) if "user_id" in scalars else None,
    )


def _labels(column: pa.Array, path: Path, first_row: int) -> np.ndarray:
    values = scalar_to_numpy(column, path, "label", first_row)
    bad = np.flatnonzero((values != 0) & (values != 1))
    if bad.size:
        raise DatasetError(f"{path}: column 'label' row {first_row + int(bad[0])} holds "
                           f"{values[bad[0]].item()!r}; labels must be 0 or 1")
    return values


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
    if split.user_id is not None and bool((split.user_id < 0).any()):
        r = first_bad(split.user_id < 0)
        raise ValueError(f"{where}: column user_id, row {r} holds {int(split.user_id[r])}; "
                         "user ids must be >= 0")
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
