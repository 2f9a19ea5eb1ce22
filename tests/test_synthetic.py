"""The synthetic MicroLens generator: layout, determinism, and the planted signal."""
from __future__ import annotations

import io
import json
import re
import zipfile
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from mmembed.datasets.synthetic import SCALES, SyntheticScale, generate
from mmembed.datasets.synthetic import latent as latent_mod
from mmembed.datasets.synthetic import text as text_mod

TINY = SCALES["tiny"]
DATA = "MicroLens_1M_x1"
INT = pa.int64()


def _files(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes()
            for p in sorted(root.rglob("*")) if p.is_file()}


def _read(root: Path, rel: str) -> pa.Table:
    return pq.read_table(root / rel)


def _matrix(table: pa.Table, column: str) -> np.ndarray:
    return np.stack(table.column(column).to_numpy(zero_copy_only=False))


def _assert_schema(table: pa.Table, expected: dict[str, pa.DataType]) -> None:
    assert table.column_names == list(expected)
    for name, want in expected.items():
        got = table.schema.field(name).type
        if pa.types.is_list(want):
            assert pa.types.is_list(got), (name, got)
            assert got.value_type == want.value_type, (name, got)
        else:
            assert got == want, (name, got)


ROW_SCHEMA = {"user_id": INT, "item_seq": pa.list_(INT), "likes_level": INT,
              "views_level": INT, "item_id": INT}


# ---------------------------------------------------------------- determinism

def test_same_seed_gives_byte_identical_files(tiny_root, tmp_path):
    again = tmp_path / "again"
    generate(again, scale="tiny", seed=0, progress=False)
    first, second = _files(tiny_root), _files(again)
    assert sorted(first) == sorted(second)
    assert len(first) == TINY.n_items + 7 + 5  # images, 7 parquet files, 5 oracle files
    differing = [name for name in first if first[name] != second[name]]
    assert differing == []


def test_different_seed_gives_different_data(tiny_root, tmp_path):
    other = tmp_path / "seed1"
    summary = generate(other, scale="tiny", seed=1, with_images=False)
    assert summary["n_images"] == 0 and not (other / "item_images").exists()
    for rel in (f"{DATA}/train.parquet", "item_feature.parquet", "oracle/item_latent.npy"):
        assert (other / rel).read_bytes() != (tiny_root / rel).read_bytes(), rel


# ---------------------------------------------------------------- layout and schema

def test_files_and_schemas_match_the_published_layout(tiny_root):
    _assert_schema(_read(tiny_root, f"{DATA}/train.parquet"), {**ROW_SCHEMA, "label": INT})
    _assert_schema(_read(tiny_root, f"{DATA}/valid.parquet"), {**ROW_SCHEMA, "label": INT})
    _assert_schema(_read(tiny_root, f"{DATA}/test.parquet"), ROW_SCHEMA)
    _assert_schema(_read(tiny_root, f"{DATA}/item_info.parquet"), {
        "item_id": INT, "item_tags": pa.list_(INT), "item_emb_d128": pa.list_(pa.float32())})
    _assert_schema(_read(tiny_root, "item_feature.parquet"), {
        "item_id": INT, "item_title": pa.string(), "item_tags": pa.list_(INT),
        "likes_level": INT, "views_level": INT})
    _assert_schema(_read(tiny_root, "item_emb.parquet"), {
        "item_id": INT, **{f"item_emb_d128_v{k}": pa.list_(pa.float32()) for k in (1, 2, 3)}})
    _assert_schema(_read(tiny_root, "item_seq.parquet"), {"user_id": INT, "item_seq": pa.list_(INT)})
    for rel, n in ((f"{DATA}/train.parquet", TINY.n_train), (f"{DATA}/valid.parquet", TINY.n_valid),
                   (f"{DATA}/test.parquet", TINY.n_test), ("item_seq.parquet", TINY.n_users)):
        assert _read(tiny_root, rel).num_rows == n, rel


def test_item_info_has_padding_row_and_contiguous_ids(tiny_root):
    info = _read(tiny_root, f"{DATA}/item_info.parquet")
    n = TINY.n_items
    assert info.num_rows == n + 1
    assert info.column("item_id").to_pylist() == list(range(n + 1))
    tags, emb = _matrix(info, "item_tags"), _matrix(info, "item_emb_d128")
    assert tags.shape == (n + 1, 5) and emb.shape == (n + 1, 128)
    assert not tags[0].any() and not emb[0].any()
    assert np.isfinite(emb).all() and (np.abs(emb[1:]).sum(1) > 0).all()
    feature = _read(tiny_root, "item_feature.parquet")
    assert feature.column("item_id").to_pylist() == list(range(1, n + 1))
    np.testing.assert_array_equal(_matrix(feature, "item_tags"), tags[1:])
    released = _read(tiny_root, "item_emb.parquet")
    np.testing.assert_array_equal(_matrix(released, "item_emb_d128_v1"), emb[1:])
    assert not np.array_equal(_matrix(released, "item_emb_d128_v2"), emb[1:])


@pytest.mark.parametrize("split", ["train", "valid", "test"])
def test_rows_have_left_padded_histories_and_valid_ids(tiny_root, split):
    table = _read(tiny_root, f"{DATA}/{split}.parquet")
    hist = _matrix(table, "item_seq")
    assert hist.shape == (table.num_rows, TINY.seq_len)
    assert hist.min() >= 0 and hist.max() <= TINY.n_items
    real = hist > 0
    # Left padding: once a real item appears, no padding follows it; the last slot is real.
    assert (np.diff(real.astype(int), axis=1) >= 0).all()
    assert real[:, -1].all()
    assert (real.sum(1) < TINY.seq_len).mean() > 0.3  # many short histories
    assert (real.sum(1) == TINY.seq_len).any()  # some full ones
    items = table.column("item_id").to_numpy()
    assert items.min() >= 1 and items.max() <= TINY.n_items
    users = table.column("user_id").to_numpy()
    assert users.min() >= 1 and users.max() <= TINY.n_users
    feature = _read(tiny_root, "item_feature.parquet")
    for level in ("likes_level", "views_level"):
        np.testing.assert_array_equal(table.column(level).to_numpy(),
                                      feature.column(level).to_numpy()[items - 1])


def test_labels_positive_rate_and_hidden_test_labels(tiny_root):
    for split in ("train", "valid"):
        label = _read(tiny_root, f"{DATA}/{split}.parquet").column("label").to_numpy()
        assert set(np.unique(label)) == {0, 1}
        assert abs(label.mean() - 0.25) <= 0.03, split
    assert "label" not in _read(tiny_root, f"{DATA}/test.parquet").column_names
    test_labels = np.load(tiny_root / "oracle" / "test_labels.npy")
    assert test_labels.shape == (TINY.n_test,) and test_labels.dtype == np.int64
    assert abs(test_labels.mean() - 0.25) <= 0.03


def test_item_seq_file_holds_every_user_once(tiny_root):
    table = _read(tiny_root, "item_seq.parquet")
    assert table.column("user_id").to_pylist() == list(range(1, TINY.n_users + 1))
    hist = _matrix(table, "item_seq")
    assert hist.shape == (TINY.n_users, TINY.seq_len)
    assert (np.diff((hist > 0).astype(int), axis=1) >= 0).all()
    assert hist.max() <= TINY.n_items


def test_titles_and_tags_follow_the_rules(tiny_root):
    feature = _read(tiny_root, "item_feature.parquet")
    vocabulary = {w for _, words in text_mod.load_topics() for w in words}
    vocabulary |= {w for t in text_mod.load_templates() for w in t.replace("{}", " ").split()}
    for title in feature.column("item_title").to_pylist():
        words = title.split()
        assert 4 <= len(words) <= 10, title
        assert set(words) <= vocabulary, title
    tags = _matrix(feature, "item_tags")
    count = (tags > 0).sum(1)
    assert count.min() == 1 and count.max() == 5
    assert tags.max() < TINY.tag_vocab
    for row, k in zip(tags, count):
        assert (row[:k] > 0).all() and not row[k:].any()  # 0-padded on the right
        assert len(set(row[:k].tolist())) == k  # distinct


# ---------------------------------------------------------------- images

def test_images_are_decodable_jpegs_of_at_least_128px(tiny_root):
    folder = tiny_root / "item_images"
    names = sorted(p.name for p in folder.iterdir())
    assert names == sorted(f"{i}.jpg" for i in range(1, TINY.n_items + 1))
    for item_id in (1, 2, TINY.n_items):
        blob = (folder / f"{item_id}.jpg").read_bytes()
        assert blob[:3] == b"\xff\xd8\xff"
        with Image.open(io.BytesIO(blob)) as img:
            assert img.format == "JPEG" and img.size[0] >= 128 and img.size[1] >= 128
            img.load()


def test_images_do_not_depend_on_worker_count_or_chunking():
    from mmembed.datasets.synthetic import images

    params = np.random.default_rng(5).random((12, images.N_PARAMS))
    serial = list(images.render_all(params, seed=3, size=128, workers=1, chunk=12))
    pooled = list(images.render_all(params, seed=3, size=128, workers=2, chunk=5))
    assert [i for i, _ in serial] == list(range(1, 13))
    assert serial == pooled
    assert len({blob for _, blob in serial}) == 12
    other_seed = list(images.render_all(params[:2], seed=4, size=128, workers=1))
    assert other_seed[0][1] != serial[0][1]  # per-item jitter follows the seed


def test_overwrite_replaces_the_other_image_form(tiny_copy):
    summary = generate(tiny_copy, scale="tiny", seed=0, image_zip=True, overwrite=True)
    assert summary["n_images"] == TINY.n_items
    assert (tiny_copy / "item_images.zip").is_file()
    assert not (tiny_copy / "item_images").exists()
    generate(tiny_copy, scale="tiny", seed=0, with_images=False, overwrite=True)
    assert not (tiny_copy / "item_images.zip").exists()


def test_image_zip_option_packs_the_same_images_deterministically(tiny_root, tmp_path):
    root = tmp_path / "zipped"
    summary = generate(root, scale="tiny", seed=0, image_zip=True)
    assert summary["n_images"] == TINY.n_items
    assert not (root / "item_images").exists()
    with zipfile.ZipFile(root / "item_images.zip") as zf:
        infos = zf.infolist()
        assert [i.filename for i in infos] == [f"item_images/{k}.jpg"
                                               for k in range(1, TINY.n_items + 1)]
        assert {i.date_time for i in infos} == {(1980, 1, 1, 0, 0, 0)}
        for k in (1, 300, TINY.n_items):
            assert zf.read(f"item_images/{k}.jpg") == \
                (tiny_root / "item_images" / f"{k}.jpg").read_bytes()
    # Everything else is the same bytes as the folder variant.
    assert (root / DATA / "train.parquet").read_bytes() == \
        (tiny_root / DATA / "train.parquet").read_bytes()


# ---------------------------------------------------------------- oracle and truth

def test_oracle_holds_latent_vectors_and_their_layout(tiny_root):
    oracle = tiny_root / "oracle"
    layout = json.loads((oracle / "latent_layout.json").read_text())
    items = np.load(oracle / "item_latent.npy")
    users = np.load(oracle / "user_latent.npy")
    d = layout["latent_dim"]
    assert items.shape == (TINY.n_items + 1, d) and not items[0].any()
    assert users.shape == (TINY.n_users + 1, d) and not users[0].any()
    blocks = layout["blocks"]
    assert list(blocks) == ["text_only", "shared", "image_only", "collab"]
    bounds = [b for name in blocks for b in blocks[name]]
    assert bounds[0] == 0 and bounds[-1] == d
    assert all(bounds[2 * k + 1] == bounds[2 * k + 2] for k in range(len(blocks) - 1))
    assert layout["text_from"] == ["text_only", "shared"]
    assert layout["image_from"] == ["shared", "image_only"]


def test_new_items_appear_in_valid_and_test_but_rarely_in_train(tiny_root):
    meta = _read(tiny_root, "oracle/item_meta.parquet")
    is_new = np.concatenate([[False], meta.column("is_new").to_numpy()])
    release = np.concatenate([[0.0], meta.column("release_time").to_numpy()])
    rate = {}
    for split in ("train", "valid", "test"):
        items = _read(tiny_root, f"{DATA}/{split}.parquet").column("item_id").to_numpy()
        rate[split] = is_new[items].mean()
        if split == "train":  # nothing in train was released after the train period
            assert release[items].max() < latent_mod.TRAIN_END
    assert rate["valid"] > 0.02 and rate["test"] > 0.02
    assert rate["train"] < 0.2 * min(rate["valid"], rate["test"])


def test_clicks_follow_preferences_not_popularity(tiny_root):
    from sklearn.metrics import roc_auc_score

    table = _read(tiny_root, f"{DATA}/train.parquet")
    label = table.column("label").to_numpy()
    users, items = table.column("user_id").to_numpy(), table.column("item_id").to_numpy()
    u = np.load(tiny_root / "oracle" / "user_latent.npy")
    v = np.load(tiny_root / "oracle" / "item_latent.npy")
    popularity = _read(tiny_root, "oracle/item_meta.parquet").column("popularity").to_numpy()
    oracle_auc = roc_auc_score(label, (u[users] * v[items]).sum(1))
    popularity_auc = roc_auc_score(label, popularity[items - 1])
    assert 0.8 < oracle_auc < 0.97
    assert 0.45 < popularity_auc < 0.65


def test_text_and_image_each_carry_what_the_other_lacks(tiny_root):
    """Ridge from image pixels predicts the image-only latent block, titles do not; and
    the other way round for the text-only block."""
    from sklearn.feature_extraction.text import CountVectorizer
    from sklearn.linear_model import Ridge

    v = np.load(tiny_root / "oracle" / "item_latent.npy")[1:]
    blocks = json.loads((tiny_root / "oracle" / "latent_layout.json").read_text())["blocks"]
    titles = _read(tiny_root, "item_feature.parquet").column("item_title").to_pylist()
    x_text = CountVectorizer(binary=True).fit_transform(titles).toarray().astype(float)
    pixels = []
    for item_id in range(1, TINY.n_items + 1):
        with Image.open(tiny_root / "item_images" / f"{item_id}.jpg") as img:
            rgb = np.asarray(img.convert("RGB").resize((8, 8), Image.BILINEAR), float) / 255
            hsv = np.asarray(img.convert("HSV").resize((4, 4), Image.BILINEAR), float) / 255
        pixels.append(np.concatenate([rgb.ravel(), hsv.ravel()]))
    x_image = np.stack(pixels)
    split = 450

    def r2(x: np.ndarray, block: str) -> float:
        y = v[:, slice(*blocks[block])]
        pred = Ridge(alpha=10.0).fit(x[:split], y[:split]).predict(x[split:])
        resid = ((pred - y[split:]) ** 2).sum()
        return 1.0 - resid / ((y[split:] - y[split:].mean(0)) ** 2).sum()

    assert r2(x_image, "image_only") > 0.1 > r2(x_text, "image_only")
    assert r2(x_text, "text_only") > 0.07 > r2(x_image, "text_only")
    assert r2(x_image, "collab") < 0.03 and r2(x_text, "collab") < 0.03


# ---------------------------------------------------------------- bad input and scales

def test_bad_arguments_are_rejected_before_any_work(tmp_path):
    with pytest.raises(ValueError, match=re.escape("unknown scale 'huge'; valid scales: tiny, "
                                                   "demo, small, full")):
        generate(tmp_path / "a", scale="huge")
    with pytest.raises(ValueError, match="seed must be a non-negative integer, got -1"):
        generate(tmp_path / "b", seed=-1)
    with pytest.raises(TypeError, match="scale must be a name or a SyntheticScale, got int"):
        generate(tmp_path / "c", scale=3)
    with pytest.raises(ValueError, match="workers must be a positive integer, got 0"):
        generate(tmp_path / "d", workers=0)
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="is not empty; pass overwrite=True"):
        generate(busy)
    assert [p.name for p in busy.iterdir()] == ["notes.txt"]
    file_root = tmp_path / "file"
    file_root.write_text("x")
    with pytest.raises(ValueError, match="exists and is not a directory"):
        generate(file_root)
    assert not any((tmp_path / name).exists() for name in "abcd")
    with pytest.raises(ValueError, match="image_size must be >= 128, got 64"):
        SyntheticScale(name="x", n_items=100, n_users=10, n_train=10, n_valid=1, n_test=1,
                       seq_len=5, tag_vocab=100, median_clicks=5, min_clicks=3, max_clicks=9,
                       image_size=64)


def test_scales_match_the_documented_sizes():
    assert list(SCALES) == ["tiny", "demo", "small", "full"]
    full = SCALES["full"]
    assert (full.n_items, full.n_train, full.n_valid, full.n_test) == \
        (91_717, 3_600_000, 10_000, 379_142)
    assert full.tag_vocab == 11_740 and full.seq_len >= 64
    assert SCALES["small"].seq_len == 32 and SCALES["tiny"].seq_len == 20
    assert TINY.n_items >= 500
