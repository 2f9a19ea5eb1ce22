"""find_layout, load_interactions / load_user_sequences and summarize on the tiny dataset."""
from __future__ import annotations

import shutil

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from mmembed.datasets import (DatasetError, MissingFileError, find_layout, format_summary,
                              load_interactions, load_user_sequences, summarize)

X1 = "MicroLens_1M_x1"


def test_find_layout_from_root_and_x1(tiny_root):
    layout = find_layout(tiny_root)
    assert layout.root == tiny_root.resolve() and layout.split_dir == layout.root / X1
    assert layout.train == layout.root / X1 / "train.parquet"
    assert layout.item_feature == layout.root / "item_feature.parquet"
    assert all(layout.present().values())
    assert layout.image_source == layout.images_dir == layout.root / "item_images"
    assert layout.images_zip is None and layout.images_rar is None
    assert layout.cache_dir == layout.root / ".mmembed_cache"
    assert find_layout(tiny_root / X1) == layout


def test_find_layout_errors(tmp_path):
    with pytest.raises(MissingFileError, match="nope: data directory not found") as info:
        find_layout(tmp_path / "nope")
    assert isinstance(info.value, FileNotFoundError) and isinstance(info.value, ValueError)
    with pytest.raises(MissingFileError, match=r"holds neither MicroLens_1M_x1/ nor "
                                               r"item_feature\.parquet nor train/valid/test/item_info\.parquet"):
        find_layout(tmp_path)
    (tmp_path / "file.txt").write_text("x")
    with pytest.raises(MissingFileError, match=r"file\.txt: not a directory"):
        find_layout(tmp_path / "file.txt")
    (tmp_path / X1).mkdir()
    layout = find_layout(tmp_path)
    assert not any(layout.present().values()) and layout.image_source is None
    with pytest.raises(MissingFileError, match=r"train\.parquet: file not found \(expected "
                                               r"layout: ROOT/MicroLens_1M_x1/"):
        layout.require("train")
    with pytest.raises(ValueError, match="unknown dataset file 'labels'; valid: train, "):
        layout.require("labels")


def test_nested_image_folder(tiny_copy):
    images = tiny_copy / "item_images"
    shutil.move(images, tiny_copy / "tmp")
    images.mkdir()
    shutil.move(tiny_copy / "tmp", images / "item_images")
    assert find_layout(tiny_copy).images_dir == images.resolve() / "item_images"


def test_load_interactions_matches_parquet(tiny_root):
    train = load_interactions(tiny_root, "train")
    table = pq.read_table(tiny_root / X1 / "train.parquet")
    assert len(train) == 4000 and train.split == "train" and train.seq_len == 20
    assert train.item_seq.shape == (4000, 20) and train.item_seq.dtype == np.int64
    assert train.item_seq[:50].tolist() == table.column("item_seq").to_pylist()[:50]
    for column in ("user_id", "likes_level", "views_level", "item_id", "label"):
        assert getattr(train, column).tolist() == table.column(column).to_pylist()
    test = load_interactions(tiny_root / X1, "test")
    assert test.label is None and len(test) == 500


def test_load_interactions_across_batches_and_max_len(tiny_root, monkeypatch):
    from mmembed.datasets import interactions

    full = load_interactions(tiny_root, "train")
    monkeypatch.setattr(interactions, "BATCH_ROWS", 333)
    short = load_interactions(tiny_root, "train", max_len=5)
    assert short.item_seq.shape == (4000, 5)
    assert np.array_equal(short.item_seq, full.item_seq[:, -5:])
    assert np.array_equal(short.item_id, full.item_id)
    assert load_interactions(tiny_root, "valid", max_len=64).seq_len == 20
    with pytest.raises(ValueError, match="max_len must be a positive integer or None, got 0"):
        load_interactions(tiny_root, "train", max_len=0)
    with pytest.raises(ValueError, match="split must be one of train, valid, test, got 'dev'"):
        load_interactions(tiny_root, "dev")


def test_load_user_sequences(tiny_root):
    seqs = load_user_sequences(tiny_root)
    table = pq.read_table(tiny_root / "item_seq.parquet")
    assert len(seqs) == 800 and seqs.item_seq.shape == (800, 20)
    assert seqs.user_id.tolist() == table.column("user_id").to_pylist()
    assert seqs.item_seq.tolist() == table.column("item_seq").to_pylist()
    assert load_user_sequences(tiny_root, max_len=3).item_seq.shape == (800, 3)


def _rewrite(path, column, values, type_=None):
    table = pq.read_table(path)
    index = table.schema.get_field_index(column)
    array = pa.array(values, type_ or table.schema.field(index).type)
    pq.write_table(table.set_column(index, pa.field(column, array.type), array), path)


def test_interaction_errors(tiny_copy):
    path = tiny_copy / X1 / "valid.parquet"
    seq = pq.read_table(path).column("item_seq").to_pylist()
    seq[3] = seq[3][:-2]
    _rewrite(path, "item_seq", seq)
    with pytest.raises(DatasetError, match=r"valid\.parquet: column 'item_seq' row 3: list of "
                                           r"length 18, expected length 20 like the file's first row"):
        load_interactions(tiny_copy, "valid")
    _rewrite(path, "user_id", [str(i) for i in range(500)], pa.string())
    with pytest.raises(DatasetError, match=r"valid\.parquet: column 'user_id': found type string, "
                                           r"expected type int64"):
        load_interactions(tiny_copy, "valid")
    table = pq.read_table(tiny_copy / X1 / "train.parquet").drop_columns(["label"])
    pq.write_table(table, tiny_copy / X1 / "train.parquet")
    with pytest.raises(DatasetError, match=r"train\.parquet: column 'label': missing column"):
        load_interactions(tiny_copy, "train")
    labels = pq.read_table(tiny_copy / X1 / "test.parquet").column("item_id").to_pylist()
    labels[9] = None
    _rewrite(tiny_copy / X1 / "test.parquet", "item_id", labels)
    with pytest.raises(DatasetError, match=r"test\.parquet: column 'item_id' row 9: null value"):
        load_interactions(tiny_copy, "test")


def test_truncated_and_missing_split(tiny_copy):
    path = tiny_copy / X1 / "train.parquet"
    path.write_bytes(path.read_bytes()[:-30])
    with pytest.raises(DatasetError, match=r"train\.parquet: not a readable parquet file "
                                           r"\(truncated or corrupt\?\)"):
        load_interactions(tiny_copy, "train")
    (tiny_copy / "item_seq.parquet").unlink()
    with pytest.raises(MissingFileError, match=r"item_seq\.parquet: file not found"):
        load_user_sequences(tiny_copy)


def test_summarize(tiny_root):
    summary = summarize(tiny_root)
    train = load_interactions(tiny_root, "train")
    assert summary["items"] == 600
    assert summary["splits"]["train"]["rows"] == 4000
    assert summary["splits"]["train"]["positive_rate"] == pytest.approx(train.label.mean())
    assert summary["splits"]["test"]["positive_rate"] is None
    assert summary["splits"]["valid"]["history_length"] == 20
    assert summary["splits"]["train"]["mean_history"] == pytest.approx(
        np.count_nonzero(train.item_seq) / len(train))
    users = set()
    for split in ("train", "valid", "test"):
        users |= set(load_interactions(tiny_root, split).user_id.tolist())
    assert summary["users"] == len(users)
    seen = set(train.item_id.tolist()) | set(train.item_seq[train.item_seq > 0].tolist())
    assert summary["items_in_train"] == len(seen)
    eval_targets = set(load_interactions(tiny_root, "valid").item_id.tolist()) | set(
        load_interactions(tiny_root, "test").item_id.tolist())
    assert summary["eval_items_unseen_in_train"] == len(eval_targets - seen)
    assert summary["images"] == {"source": str(tiny_root.resolve() / "item_images"),
                                 "kind": "folder", "count": 600, "example_size": [128, 128]}
    assert summary["user_sequences"]["users"] == 800
    assert summary["files"]["item_feature.parquet"] == (tiny_root / "item_feature.parquet").stat().st_size
    text = format_summary(summary)
    assert "  split           rows  positives  history L  mean non-pad" in text
    assert "  test             500          -         20" in text
    assert "images (folder): 600 files, e.g. 128x128 px" in text
