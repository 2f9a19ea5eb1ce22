"""ctr_eval.data: file resolution, split loading, item table validation, id checks.

The datasets here are written by hand with pyarrow (small, exact contents, easy to break).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from ctr_eval.data import check_ids, load_item_table, load_split
from ctr_eval.format import find_layout

N_ITEMS = 30
SEQ_LEN = 8


def _write_item_info(path: Path, tags: np.ndarray, emb: np.ndarray, width: int | None = None) -> None:
    rows = emb.shape[0]
    pq.write_table(pa.table({
        "item_id": pa.array(np.arange(rows), pa.int64()),
        "item_tags": pa.array(list(tags), pa.list_(pa.int64())),
        "item_emb_d128": pa.array([list(r) for r in emb], pa.list_(pa.float32())),
    }), path)


def _write_split(path: Path, seq: np.ndarray, target: np.ndarray, label: np.ndarray | None,
                 likes: np.ndarray | None = None) -> None:
    n = len(target)
    likes = np.arange(n) % 11 if likes is None else likes
    columns = {
        "user_id": pa.array(np.arange(n), pa.int64()),
        "item_seq": pa.array([list(r) for r in seq], pa.list_(pa.int64())),
        "likes_level": pa.array(likes, pa.int64()),
        "views_level": pa.array((np.arange(n) * 3) % 11, pa.int64()),
        "item_id": pa.array(target, pa.int64()),
    }
    if label is not None:
        columns["label"] = pa.array(label, pa.int64())
    pq.write_table(pa.table(columns), path, row_group_size=7)  # several row groups


def make_dataset(root: Path, n_rows: int = 40, seed: int = 0) -> dict:
    """A challenge-layout root with item_info and train/valid/test; returns the arrays."""
    rng = np.random.default_rng(seed)
    split_dir = root / "MicroLens_1M_x1"
    split_dir.mkdir(parents=True)
    tags = rng.integers(1, 20, (N_ITEMS + 1, 5))
    tags[:, 3:] = 0
    tags[0] = 0
    emb = rng.normal(size=(N_ITEMS + 1, 128)).astype(np.float32)
    emb[0] = 0
    _write_item_info(split_dir / "item_info.parquet", tags, emb)
    arrays = {"tags": tags, "emb": emb}
    for name in ("train", "valid", "test"):
        seq = rng.integers(1, N_ITEMS + 1, (n_rows, SEQ_LEN))
        lengths = rng.integers(0, SEQ_LEN + 1, n_rows)
        seq[np.arange(SEQ_LEN)[None, :] < (SEQ_LEN - lengths)[:, None]] = 0
        target = rng.integers(1, N_ITEMS + 1, n_rows)
        label = rng.integers(0, 2, n_rows)
        _write_split(split_dir / f"{name}.parquet", seq, target, None if name == "test" else label)
        arrays[name] = {"seq": seq, "target": target, "label": label}
    return arrays


@pytest.fixture
def dataset(tmp_path):
    root = tmp_path / "data"
    return root, make_dataset(root)


def test_find_layout_accepts_root_or_split_dir(dataset):
    root, _ = dataset
    files = find_layout(root)
    assert files.root == root and files.split_dir == root / "MicroLens_1M_x1"
    inner = find_layout(root / "MicroLens_1M_x1")
    assert inner.root == root and inner.split("valid") == root / "MicroLens_1M_x1" / "valid.parquet"


def test_find_layout_refuses_other_folders(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"data directory not found"):
        find_layout(tmp_path / "nope")
    with pytest.raises(FileNotFoundError, match=r"holds neither MicroLens_1M_x1/ nor"):
        find_layout(tmp_path)


def test_load_split_keeps_last_positions_as_int32(dataset):
    root, arrays = dataset
    split = load_split(root, "train", max_len=5)
    assert len(split) == 40 and split.item_seq.dtype == torch.int32
    assert split.item_seq.shape == (40, 5) and split.seq_len_in_file == SEQ_LEN
    assert np.array_equal(split.item_seq.numpy(), arrays["train"]["seq"][:, -5:])
    assert np.array_equal(split.item_id.numpy(), arrays["train"]["target"])
    assert split.label.dtype == torch.float32
    assert np.array_equal(split.label.numpy(), arrays["train"]["label"].astype(np.float32))
    assert np.array_equal(split.likes_level.numpy(), np.arange(40) % 11)


def test_load_split_with_max_len_above_file_width_keeps_all(dataset):
    root, arrays = dataset
    split = load_split(root, "valid", max_len=64)
    assert split.max_len == SEQ_LEN
    assert np.array_equal(split.item_seq.numpy(), arrays["valid"]["seq"])


def test_test_split_has_no_label_and_batches(dataset):
    root, arrays = dataset
    split = load_split(root, "test")
    assert split.label is None
    batch = split.batch(torch.tensor([3, 0]))
    assert set(batch) == {"item_id", "likes_level", "views_level", "item_seq", "user_id"}
    assert batch["item_seq"].dtype == torch.long
    assert np.array_equal(batch["item_seq"].numpy(), arrays["test"]["seq"][[3, 0]])
    labelled = load_split(root, "train").batch(slice(0, 4))
    assert labelled["label"].shape == (4,)


def test_split_with_bad_label_is_refused(tmp_path):
    root = tmp_path / "data"
    make_dataset(root)
    path = root / "MicroLens_1M_x1" / "train.parquet"
    table = pq.read_table(path)
    labels = table.column("label").to_numpy().copy()
    labels[17] = 2
    pq.write_table(table.set_column(table.schema.get_field_index("label"), "label",
                                    pa.array(labels)), path, row_group_size=7)
    with pytest.raises(ValueError, match=r"train.parquet: column 'label' row 17 holds 2; labels must be 0 or 1"):
        load_split(root, "train")


def test_split_without_label_or_with_ragged_history_is_refused(tmp_path):
    root = tmp_path / "data"
    make_dataset(root)
    split_dir = root / "MicroLens_1M_x1"
    _write_split(split_dir / "valid.parquet", np.ones((3, 4), int), np.ones(3, int), None)
    with pytest.raises(ValueError, match=r"valid.parquet: column 'label': missing column"):
        load_split(root, "valid")
    seq = [[1, 2, 3], [1, 2, 3], [4, 5]]
    pq.write_table(pa.table({"item_seq": pa.array(seq, pa.list_(pa.int64())),
                             "likes_level": [0, 1, 2], "views_level": [0, 1, 2],
                             "item_id": [1, 2, 3], "label": [0, 1, 0]}), split_dir / "train.parquet")
    with pytest.raises(ValueError, match=r"train.parquet: column 'item_seq' row 2: list of length 2, expected length 3"):
        load_split(root, "train")
    with pytest.raises(FileNotFoundError, match=r"test.parquet: the test split file does not exist"):
        (split_dir / "test.parquet").unlink()
        load_split(root, "test")


def test_load_item_table_from_dataset_path_and_array(dataset, tmp_path):
    root, arrays = dataset
    table = load_item_table(root)
    assert table.num_items == N_ITEMS and table.tags.dtype == torch.long
    assert np.array_equal(table.tags.numpy(), arrays["tags"])
    assert np.array_equal(table.emb.numpy(), arrays["emb"])

    other = arrays["emb"] * 2
    path = tmp_path / "mine.parquet"
    pq.write_table(pa.table({"item_id": np.arange(N_ITEMS + 1),
                             "item_emb_d128": pa.array([list(r) for r in other], pa.list_(pa.float32()))}),
                   path)
    from_path = load_item_table(root, path)  # no tags in the file: the dataset's are used
    assert np.array_equal(from_path.emb.numpy(), other) and np.array_equal(from_path.tags.numpy(), arrays["tags"])

    from_array = load_item_table(root, other.astype(np.float64))
    assert from_array.emb.dtype == torch.float32 and np.allclose(from_array.emb.numpy(), other)
    assert from_array.fingerprint() == from_path.fingerprint() != table.fingerprint()


def _bad_emb(arrays, kind):
    emb = arrays["emb"].copy()
    if kind == "nan":
        emb[5, 7] = np.nan
    elif kind == "inf":
        emb[6, 0] = np.inf
    elif kind == "row0":
        emb[0, 3] = 0.5
    return emb


@pytest.mark.parametrize("kind, message", [
    ("nan", r"column 'item_emb_d128' row 5: embedding values must be finite \(no NaN or inf\)"),
    ("inf", r"column 'item_emb_d128' row 6: embedding values must be finite"),
    ("row0", r"row 0 must be the all-zero padding item .*found item_emb_d128 with 1 non-zero values"),
])
def test_bad_embedding_values_are_refused(dataset, tmp_path, kind, message):
    root, arrays = dataset
    emb = _bad_emb(arrays, kind)
    with pytest.raises(ValueError, match=r"item_info array: " + message):
        load_item_table(root, emb)
    path = tmp_path / f"{kind}.parquet"
    _write_item_info(path, arrays["tags"], emb)
    with pytest.raises(ValueError, match=rf"{kind}.parquet: " + message):
        load_item_table(root, path)


def test_wrong_width_and_row_count_are_refused(dataset, tmp_path):
    root, arrays = dataset
    with pytest.raises(ValueError, match=r"item_info array: embedding table has shape \(31, 64\); expected \(N\+1, 128\)"):
        load_item_table(root, np.zeros((N_ITEMS + 1, 64), np.float32))
    path = tmp_path / "narrow.parquet"
    _write_item_info(path, arrays["tags"], np.zeros((N_ITEMS + 1, 64), np.float32))
    with pytest.raises(ValueError, match=r"narrow.parquet: column 'item_emb_d128' row 0: list of length 64, expected length 128"):
        load_item_table(root, path)
    with pytest.raises(ValueError, match=r"embedding table has 21 rows but .*item_info.parquet describes 31 rows"):
        load_item_table(root, np.zeros((21, 128), np.float32))
    with pytest.raises(TypeError, match=r"item_info array must hold floats, got dtype int64"):
        load_item_table(root, np.zeros((N_ITEMS + 1, 128), np.int64))
    with pytest.raises(FileNotFoundError, match=r"missing.parquet: file not found"):
        load_item_table(root, tmp_path / "missing.parquet")


def test_item_info_rows_must_be_in_id_order(dataset, tmp_path):
    root, arrays = dataset
    path = tmp_path / "shuffled.parquet"
    pq.write_table(pa.table({"item_id": np.r_[0, 2, 1, np.arange(3, N_ITEMS + 1)],
                             "item_emb_d128": pa.array([list(r) for r in arrays["emb"]], pa.list_(pa.float32()))}),
                   path)
    with pytest.raises(ValueError, match=r"shuffled.parquet: column 'item_id' row 1 holds 2: row i must hold item i"):
        load_item_table(root, path)


def test_check_ids_passes_on_good_data(dataset):
    root, _ = dataset
    table = load_item_table(root)
    for name in ("train", "valid", "test"):
        split = load_split(root, name)
        check_ids(split, table)  # raises on any id without a row
        assert int(split.item_id.max()) <= table.num_items


def test_check_ids_refuses_ids_without_rows(dataset):
    root, arrays = dataset
    table = load_item_table(root)
    small = load_item_table(root, arrays["emb"])
    small.emb = small.emb[:11]  # an embedding table that only knows items 1..10
    small.tags = small.tags[:11]
    split = load_split(root, "train")
    bad_row = int(np.flatnonzero(arrays["train"]["target"] > 10)[0])
    with pytest.raises(ValueError, match=rf"train.parquet: column item_id, row {bad_row}: item "
                                         rf"{arrays['train']['target'][bad_row]} has no row in the item table "
                                         r"\(array\(31, 128\): 11 rows, valid target ids 1..10\)"):
        check_ids(split, small)
    split.item_id[:] = 1
    with pytest.raises(ValueError, match=r"column item_seq, row \d+: item \d+ has no row in the item table .*"
                                         r"valid ids 0..10, 0 = padding"):
        check_ids(split, small)
    split.item_seq[:] = 0
    split.likes_level[4] = 11
    with pytest.raises(ValueError, match=r"column likes_level, row 4 holds 11; valid levels are 0..10"):
        check_ids(split, table)
    split.likes_level[4] = 0
    split.label[2] = 0.5
    with pytest.raises(ValueError, match=r"column label, row 2 holds 0.5; labels must be 0 or 1"):
        check_ids(split, table)
