"""Task 2 features in ctr_eval: semantic-ID codes, item-level likes/views, user_id; QIN."""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

import ctr_eval
from ctr_eval.config import config_hash, config_to_dict, resolve_config
from ctr_eval.data import ItemTable, add_task2_features, load_item_table, load_split
from ctr_eval.format import (ITEM_CODES_FILE, DatasetError, MissingFileError, find_layout,
                             item_codes_table, read_item_codes, read_item_levels)
from ctr_eval.layers import code_rows
from ctr_eval.models import MODELS, build_model, list_models
from ctr_eval.models.qin import ReLUTargetAttention

pytestmark = pytest.mark.usefixtures("one_thread")

TASK2 = {"item_codes": True, "item_levels": True, "user_id": True}


def _codes(rows: int, levels: int = 3, k: int = 4, seed: int = 0) -> np.ndarray:
    codes = np.random.default_rng(seed).integers(0, k, (rows, levels))
    codes[0] = -1
    return codes


def _write_codes(path, codes) -> None:
    pq.write_table(item_codes_table(codes), path)


# ------------------------------------------------------------------ the files


def test_item_codes_file_round_trips_keyed_by_item_id(tmp_path):
    codes = _codes(9)
    _write_codes(tmp_path / ITEM_CODES_FILE, codes)
    table = pq.read_table(tmp_path / ITEM_CODES_FILE)
    assert table.column("item_id").to_pylist() == list(range(9))
    assert np.array_equal(read_item_codes(tmp_path / ITEM_CODES_FILE, rows=9), codes)


@pytest.mark.parametrize("case, message", [
    ("padding", r"row 0 \(padding\) holds \[0, 1\]; it must be -1"),
    ("negative", r"row 3 level 1 holds -2; item codes must be >= 0"),
    ("order", r"column 'item_id' row 1 holds 2; row i must hold item i"),
    ("rows", r"5 rows, but the item table has 6"),
])
def test_item_codes_file_errors_name_the_row(tmp_path, case, message):
    codes = np.array([[-1, -1], [0, 1], [2, 3], [1, 1], [0, 0]])
    ids = np.arange(5)
    if case == "padding":
        codes[0] = [0, 1]
    if case == "negative":
        codes[3, 1] = -2
    if case == "order":
        ids = np.array([0, 2, 1, 3, 4])
    path = tmp_path / ITEM_CODES_FILE
    offsets = np.arange(0, codes.size + 1, 2, dtype=np.int32)
    pq.write_table(pa.table({"item_id": ids, "item_codes": pa.ListArray.from_arrays(
        pa.array(offsets), pa.array(codes.ravel()))}), path)
    with pytest.raises(DatasetError, match=message):
        read_item_codes(path, rows=6 if case == "rows" else 5)


def test_item_levels_are_read_by_item_id_in_any_row_order(tiny_root, tmp_path):
    source = find_layout(tiny_root).item_feature
    feature = pq.read_table(source, columns=["item_id", "likes_level", "views_level"])
    n = feature.num_rows
    levels = read_item_levels(source, n + 1)
    ids = feature.column("item_id").to_numpy()
    assert levels.shape == (n + 1, 2) and (levels[0] == 0).all()
    assert np.array_equal(levels[ids, 0], feature.column("likes_level").to_numpy())
    assert np.array_equal(levels[ids, 1], feature.column("views_level").to_numpy())
    shuffled = feature.take(np.random.default_rng(1).permutation(n))
    pq.write_table(shuffled, tmp_path / "item_feature.parquet")
    assert np.array_equal(read_item_levels(tmp_path / "item_feature.parquet", n + 1), levels)
    with pytest.raises(DatasetError, match=rf"expected each of the item table's {n + 1} items once"):
        read_item_levels(tmp_path / "item_feature.parquet", n + 2)


def test_code_rows_give_each_level_its_own_rows_and_none_the_padding_row():
    codes = torch.tensor([[-1, -1, -1], [0, 0, 0], [2, 1, 0], [1, 0, 4]])
    rows = code_rows(codes, 4)
    # level widths 3, 2, 5 -> level 0 rows 1..3, level 1 rows 4..5, level 2 rows 6..10
    assert rows.tolist() == [[0, 0, 0], [1, 4, 6], [3, 5, 6], [2, 4, 10]]


# ------------------------------------------------------------------ the config


def test_task1_lock_refuses_every_task2_feature():
    for key in (*TASK2, "user_id_buckets"):
        value = 8 if key == "user_id_buckets" else True
        with pytest.raises(ValueError, match=rf"Task 1 mode fixes the DIN configuration: {key} may not change"):
            resolve_config("din", **{key: value})
        assert getattr(resolve_config("din", task1=False, **{key: value}), key) == value


def test_task2_fields_stay_out_of_the_config_json_at_their_default():
    plain = resolve_config("din")
    assert not set(TASK2) & set(config_to_dict(plain))
    on = resolve_config("din", task1=False, item_codes=True)
    assert config_to_dict(on)["item_codes"] is True and on.task2_features == ["item_codes"]
    assert config_hash(on) != config_hash(resolve_config("din", task1=False))
    with pytest.raises(ValueError, match=r"user_id_buckets must be >= 0"):
        resolve_config("din", task1=False, user_id_buckets=-1)


# ------------------------------------------------------------------ the models


def _table(n_items=30, users=12, codes=True, levels=True) -> ItemTable:
    g = torch.Generator().manual_seed(0)
    emb = torch.randn(n_items + 1, 128, generator=g)
    emb[0] = 0
    tags = torch.randint(1, 6, (n_items + 1, 5), generator=g)
    tags[0] = 0
    level_table = torch.randint(0, 11, (n_items + 1, 2), generator=g)
    level_table[0] = 0
    return ItemTable(tags=tags, emb=emb, codes=torch.from_numpy(_codes(n_items + 1)) if codes else None,
                     levels=level_table if levels else None, user_rows=users)


def _batch(n_items=30, rows=16, length=6, users=12) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    seq = torch.randint(1, n_items + 1, (rows, length), generator=g)
    seq[:, :2] = 0
    return {"item_id": torch.randint(1, n_items + 1, (rows,), generator=g),
            "likes_level": torch.randint(0, 11, (rows,), generator=g),
            "views_level": torch.randint(0, 11, (rows,), generator=g),
            "item_seq": seq, "user_id": torch.randint(1, users + 5, (rows,), generator=g),
            "label": torch.randint(0, 2, (rows,), generator=g).float()}


@pytest.mark.parametrize("name", list_models())
def test_each_task2_feature_embedding_receives_gradients(name):
    torch.manual_seed(0)
    cfg = resolve_config(name, task1=False, **MODELS.get(name).tiny_config, **TASK2)
    model = build_model(name, cfg, _table())
    plain = build_model(name, resolve_config(name, task1=False, **MODELS.get(name).tiny_config),
                        _table(codes=False, levels=False, users=0))
    d = cfg.embedding_dim
    assert model.items.output_dim == plain.items.output_dim + 3 * d
    assert model.context_dim == plain.context_dim + d
    batch = _batch()
    logits = model(batch)
    assert logits.shape == (16,) and torch.isfinite(logits).all()
    model.loss(logits, batch["label"]).backward()
    for table in (model.items.code_embedding, model.items.likes_embedding, model.items.views_embedding,
                  model.user_embedding):
        grad = table.weight.grad
        assert grad is not None and grad[1:].abs().sum() > 0, table
        assert grad[0].abs().sum() == 0  # the padding row stays out
    assert {id(p) for p in model.embedding_parameters()} >= {
        id(t.weight) for t in (model.items.code_embedding, model.user_embedding)}


def test_user_rows_map_unknown_users_to_row_0_and_hash_into_buckets():
    cfg = resolve_config("din", task1=False, **MODELS.get("din").tiny_config, **TASK2)
    model = build_model("din", cfg, _table(users=10))
    ids = torch.tensor([0, 3, 9, 10, 25])
    assert model.user_rows({"user_id": ids}).tolist() == [0, 3, 9, 0, 0]
    hashed = resolve_config("din", task1=False, **MODELS.get("din").tiny_config, **TASK2, user_id_buckets=4)
    model = build_model("din", hashed, _table(users=5))
    assert model.user_rows({"user_id": ids}).tolist() == [1, 4, 2, 3, 2]


def test_a_model_refuses_a_table_without_the_features_its_config_asks_for():
    cfg = resolve_config("qin", task1=False, **MODELS.get("qin").tiny_config, item_codes=True)
    with pytest.raises(ValueError, match=r"config item_codes=True but the item table lacks that feature"):
        build_model("qin", cfg, _table(codes=False, levels=False, users=0))


def test_qin_relu_attention_equals_a_per_row_loop():
    torch.manual_seed(0)
    attention = ReLUTargetAttention(6)
    target, table = torch.randn(4, 6), torch.randn(7, 6)
    rows = torch.tensor([[0, 0, 3, 1, 6], [2, 2, 5, 4, 3], [0, 0, 0, 0, 0], [0, 1, 0, 5, 6]])
    history = table[rows]
    mask = torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1], [0, 0, 0, 0, 0], [0, 1, 0, 1, 1]]).bool()
    out = attention(target, table, rows, mask)
    attention.requires_grad_(False)  # the loop below reads the weights as plain numbers
    for b in range(4):
        q = attention.query.weight @ target[b]
        pooled = torch.zeros(12)
        for t in range(5):
            if mask[b, t]:
                score = max(float(q @ (attention.key.weight @ history[b, t])) / 12 ** 0.5, 0.0)
                pooled += score * (attention.value.weight @ history[b, t])
        expected = attention.output.weight @ pooled + attention.output.bias + target[b]
        assert torch.allclose(out[b], expected, atol=1e-5)
    assert torch.allclose(out[2], attention.output.bias + target[2], atol=1e-6)  # no history


# ------------------------------------------------------------------ end to end


def _tiny_settings(model: str) -> dict:
    return {**MODELS.get(model).tiny_config, "batch_size": 256}


def test_evaluate_with_every_task2_feature_trains_and_predicts(tiny_copy, tmp_path):
    rows = load_item_table(tiny_copy).num_items + 1
    _write_codes(find_layout(tiny_copy).item_info.parent / ITEM_CODES_FILE, _codes(rows, k=8))
    result = ctr_eval.evaluate(tiny_copy, model="qin", task1=False, run_dir=tmp_path / "run", max_epochs=1,
                               progress=False, **_tiny_settings("qin"), **TASK2)
    assert result["task2_features"] == ["item_codes", "item_levels", "user_id"]
    assert 0.0 <= result["valid_auc"] <= 1.0
    zip_path = ctr_eval.predict(tmp_path / "run", tiny_copy, split="valid", progress=False)
    assert zip_path.is_file()
    plain = load_item_table(tiny_copy)
    cfg = resolve_config("qin", task1=False, **TASK2)
    full = add_task2_features(plain, tiny_copy, cfg, load_split(tiny_copy, "train"))
    assert full.fingerprint() != plain.fingerprint()
    assert json.loads((tmp_path / "run" / "run.json").read_text())["item_table_fingerprint"] == full.fingerprint()
    with pytest.raises(ValueError, match=r"Task 1 mode fixes the DIN configuration: item_codes"):
        ctr_eval.evaluate(tiny_copy, item_codes=True, run_dir=tmp_path / "task1")
    assert not (tmp_path / "task1").exists()


def test_missing_codes_are_named_with_where_they_were_looked_for(tiny_root, tmp_path):
    with pytest.raises(MissingFileError, match=r"item_codes=True needs semantic-ID codes.*item_codes.parquet"):
        ctr_eval.evaluate(tiny_root, model="din", task1=False, item_codes=True, run_dir=tmp_path / "r",
                          progress=False)
    assert not (tmp_path / "r").exists()
    with pytest.raises(ValueError, match=r"codes were given but the config does not use them"):
        ctr_eval.evaluate(tiny_root, model="din", task1=False, codes=np.zeros((3, 2), np.int64),
                          run_dir=tmp_path / "r", progress=False)


@pytest.mark.slow
def test_two_processes_train_the_one_process_qin_with_every_feature(tiny_copy, tmp_path):
    rows = load_item_table(tiny_copy).num_items + 1
    _write_codes(find_layout(tiny_copy).item_info.parent / ITEM_CODES_FILE, _codes(rows, k=8))
    # At QIN's own learning rate (2e-3) the tiny data's first epoch ends with a train BCE of
    # 1.3-1.6: the quadratic layers' products turn float summation noise into differences of
    # 3e-4 by epoch 2, with or without these features; at 2e-4 training is smooth and the
    # two runs agree to 1e-5, which is what this test is about (the same model, not noise).
    settings = {**_tiny_settings("qin"), **TASK2, "learning_rate": 2e-4}
    sets = [f"--set={k}={json.dumps(v)}" for k, v in settings.items()]
    args = ["-m", "ctr_eval.cli", "-q", "train", "--data", str(tiny_copy), "--model", "qin", "--no-task1",
            *sets, "--max-epochs", "2", "--no-progress", "--device", "cpu"]
    one = subprocess.run([sys.executable, *args, "--run-dir", str(tmp_path / "one")], capture_output=True,
                         text=True)
    assert one.returncode == 0, one.stderr[-3000:]
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node",
                          "2", *args, "--run-dir", str(tmp_path / "two")], capture_output=True, text=True)
    assert two.returncode == 0, two.stderr[-3000:]
    a = json.loads((tmp_path / "one" / "result.json").read_text())
    b = json.loads((tmp_path / "two" / "result.json").read_text())
    assert (a["num_processes"], b["num_processes"]) == (1, 2)
    for h1, h2 in zip(a["history"], b["history"]):
        assert h2["train_bce"] == pytest.approx(h1["train_bce"], abs=1e-4)
        assert h2["valid_auc"] == pytest.approx(h1["valid_auc"], abs=1e-3)
