"""ctr_eval.evaluate / ctr_eval.predict on the tiny synthetic dataset.

Most tests use a reduced DIN (task1=False, small widths) so that they run in seconds; the
Task-1 DIN itself is trained in the slow oracle-vs-random test.
"""
from __future__ import annotations

import json

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

import ctr_eval
from ctr_eval.submission import read_submission
from ctr_eval.train import LAST_CHECKPOINT, RESULT_FILE, RUN_FILE

from _parquet_edit import set_values

SMALL = {"embedding_dim": 8, "attention_hidden_units": [16], "dnn_hidden_units": [32, 16],
         "batch_size": 512}


def small_eval(root, run_dir, **kw):
    return ctr_eval.evaluate(root, task1=False, run_dir=run_dir, progress=False, **{**SMALL, **kw})


def oracle_table(root) -> np.ndarray:
    """The generator's true latent item vectors, zero-padded to 128 columns."""
    latent = np.load(root / "oracle" / "item_latent.npy").astype(np.float32)
    out = np.zeros((latent.shape[0], 128), np.float32)
    out[:, : latent.shape[1]] = latent
    return out


def random_table_like(table: np.ndarray, seed: int = 0) -> np.ndarray:
    rnd = np.random.default_rng(seed).standard_normal(table.shape).astype(np.float32)
    rnd *= table[1:].std()
    rnd[0] = 0
    return rnd


def test_evaluate_returns_the_documented_result(tiny_root, tmp_path):
    result = small_eval(tiny_root, tmp_path / "run", max_epochs=2)
    for key in ("valid_auc", "valid_logloss", "history", "config", "config_hash", "model",
                "epochs_run", "best_epoch", "train_samples_per_s", "embedding_source", "run_dir"):
        assert key in result, key
    assert result["model"] == "din" and result["epochs_run"] == 2 and len(result["history"]) == 2
    assert 0.0 <= result["valid_auc"] <= 1.0 and result["valid_logloss"] > 0
    assert result["config"]["embedding_dim"] == 8 and result["max_epochs_cap"] == 2
    cfg = ctr_eval.resolve_config("din", task1=False, **SMALL)
    assert result["config_hash"] == ctr_eval.config_hash(cfg)
    assert result["embedding_source"].startswith("dataset: ")
    assert result["n_valid"] == pq.ParquetFile(tiny_root / "MicroLens_1M_x1" / "valid.parquet").metadata.num_rows
    best = result["history"][result["best_epoch"] - 1]
    assert best["valid_auc"] == result["valid_auc"] == max(h["valid_auc"] for h in result["history"])
    saved = json.loads((tmp_path / "run" / RESULT_FILE).read_text())
    assert saved == json.loads(json.dumps(result))
    run = json.loads((tmp_path / "run" / RUN_FILE).read_text())
    assert run["config_hash"] == result["config_hash"] and run["config"] == result["config"]


def test_evaluate_without_run_dir_leaves_no_temporary_folder(tiny_root, tmp_path, monkeypatch):
    import tempfile

    scratch = tmp_path / "scratch"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    made = []
    real_mkdtemp = tempfile.mkdtemp
    monkeypatch.setattr(tempfile, "mkdtemp", lambda **kw: made.append(real_mkdtemp(**kw)) or made[-1])
    result = small_eval(tiny_root, None, max_epochs=1)
    assert result["run_dir"] is None and 0.0 <= result["valid_auc"] <= 1.0
    assert len(made) == 1 and made[0].startswith(str(scratch / "ctr_eval_din_"))
    # (torch may leave its own compile cache, torchinductor_<user>, there: not ours)
    assert [p.name for p in scratch.iterdir() if p.name.startswith("ctr_eval")] == []


def test_evaluate_accepts_the_split_folder_and_an_array(tiny_root, tmp_path):
    table = oracle_table(tiny_root)
    result = small_eval(tiny_root / "MicroLens_1M_x1", tmp_path / "run", item_info=table, max_epochs=1)
    assert result["embedding_source"].startswith("array: shape (601, 128) float32, sha256 ")


def test_evaluate_is_deterministic(tiny_root, tmp_path):
    a = small_eval(tiny_root, tmp_path / "a", max_epochs=2)
    b = small_eval(tiny_root, tmp_path / "b", max_epochs=2)
    assert abs(a["valid_auc"] - b["valid_auc"]) <= 1e-6
    assert [h["train_bce"] for h in a["history"]] == [h["train_bce"] for h in b["history"]]


def test_task1_mode_refuses_architecture_changes_before_anything_is_written(tiny_root, tmp_path):
    with pytest.raises(ValueError, match="Task 1 mode fixes the DIN configuration: embedding_dim may not change"):
        ctr_eval.evaluate(tiny_root, run_dir=tmp_path / "run", embedding_dim=8)
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("breakage, message", [
    ("nan", r"item_info array.*(NaN|nan|finite)"),
    ("width", r"item_info array.*128"),
    ("row0", r"item_info array.*row 0"),
    ("rows", r"embedding table has 600 rows"),
])
def test_bad_embedding_tables_are_refused_before_training(tiny_root, tmp_path, breakage, message):
    table = oracle_table(tiny_root)
    if breakage == "nan":
        table[5, 3] = np.nan
    elif breakage == "width":
        table = table[:, :64]
    elif breakage == "row0":
        table[0, 0] = 1.0
    else:
        table = table[:-1]
    with pytest.raises(ValueError, match=message):
        small_eval(tiny_root, tmp_path / "run", item_info=table, max_epochs=1)
    assert not (tmp_path / "run" / LAST_CHECKPOINT).exists()
    assert not (tmp_path / "run").exists()


def test_item_ids_missing_from_the_table_are_refused(tiny_copy, tmp_path):
    set_values(tiny_copy / "MicroLens_1M_x1" / "valid.parquet", "item_id", [7], 10_000)
    with pytest.raises(ValueError, match=r"valid.parquet: column item_id, row 7: item 10000 has no row"):
        small_eval(tiny_copy, tmp_path / "run", max_epochs=1)
    assert not (tmp_path / "run").exists()


def test_labels_outside_0_1_are_refused(tiny_copy, tmp_path):
    set_values(tiny_copy / "MicroLens_1M_x1" / "train.parquet", "label", [3], 2)
    with pytest.raises(ValueError, match=r"train.parquet: column 'label' row 3 holds 2; labels must be 0 or 1"):
        small_eval(tiny_copy, tmp_path / "run", max_epochs=1)


def test_unknown_override_names_the_nearest_key(tiny_root, tmp_path):
    with pytest.raises(ValueError, match=r"unknown din config key 'learning_rat'; did you mean 'learning_rate'\?"):
        ctr_eval.evaluate(tiny_root, run_dir=tmp_path / "run", learning_rat=0.1)


def test_resume_after_a_cap_matches_a_straight_run(tiny_root, tmp_path):
    straight = small_eval(tiny_root, tmp_path / "straight", max_epochs=3)
    small_eval(tiny_root, tmp_path / "resumed", max_epochs=1)
    resumed = small_eval(tiny_root, tmp_path / "resumed", max_epochs=3)
    assert [h["valid_auc"] for h in resumed["history"]] == [h["valid_auc"] for h in straight["history"]]
    assert resumed["valid_auc"] == straight["valid_auc"]


def test_a_different_embedding_in_the_same_run_dir_is_refused(tiny_root, tmp_path):
    small_eval(tiny_root, tmp_path / "run", max_epochs=1)
    with pytest.raises(ValueError, match=r"holds a different run \(item_table_fingerprint"):
        small_eval(tiny_root, tmp_path / "run", item_info=oracle_table(tiny_root), max_epochs=1)


def test_train_rows_trains_on_a_fixed_random_subset(tiny_root, tmp_path):
    from ctr_eval.data import load_split

    split = load_split(tiny_root, "train")
    sub = split.subset(300)
    again = split.subset(300)
    assert len(sub) == 300 and torch.equal(sub.item_seq, again.item_seq) and torch.equal(sub.label, again.label)
    # rows of the file, in file order, not the first 300
    assert not torch.equal(sub.item_id, split.item_id[:300])
    assert split.subset(len(split) + 5) is split
    whole = small_eval(tiny_root, tmp_path / "whole", max_epochs=1, train_rows=len(split) + 5)
    assert "train_rows" not in whole and whole["n_train"] == len(split)  # all rows: as without it
    result = small_eval(tiny_root, tmp_path / "run", max_epochs=1, train_rows=300)
    assert result["n_train"] == 300 and result["train_rows"] == f"300 of {len(split)} (random, seed 0)"
    assert result["history"][0]["train_samples"] == 300
    with pytest.raises(ValueError, match="holds a different run \\(train_rows"):
        small_eval(tiny_root, tmp_path / "run", max_epochs=1, train_rows=200)
    with pytest.raises(ValueError, match="train_rows must be"):
        small_eval(tiny_root, tmp_path / "other", train_rows=0)
    assert not (tmp_path / "other").exists()


def test_predict_writes_test_scores_in_test_order(tiny_root, tmp_path):
    result = small_eval(tiny_root, tmp_path / "run", max_epochs=1)
    zip_path = ctr_eval.predict(result["run_dir"], tiny_root, task="Task2", progress=False)
    assert zip_path == tmp_path / "run" / "submission.zip"
    task, scores = read_submission(zip_path)
    n_test = pq.ParquetFile(tiny_root / "MicroLens_1M_x1" / "test.parquet").metadata.num_rows
    assert task == "Task2" and scores.shape == (n_test,)
    # the same model scored row by row, in file order, gives the same numbers
    _, cfg, table, net = ctr_eval.load_run(result["run_dir"])
    split = ctr_eval.load_split(tiny_root, "test", max_len=cfg.max_len)
    net.eval()
    with torch.no_grad():
        direct = torch.cat([torch.sigmoid(net(split.batch(torch.arange(a, min(a + 97, len(split))))))
                            for a in range(0, len(split), 97)]).numpy()
    np.testing.assert_allclose(scores, direct, rtol=0, atol=2e-6)
    # the validation predictions of the best model reproduce the reported AUC
    zip_valid = ctr_eval.predict(result["run_dir"], tiny_root, out_dir=tmp_path / "v", split="valid",
                                 progress=False)
    _, valid_scores = read_submission(zip_valid)
    labels = ctr_eval.load_split(tiny_root, "valid").label.numpy()
    assert ctr_eval.auc(labels, valid_scores) == pytest.approx(result["valid_auc"], abs=1e-6)


def test_public_names_are_the_functions():
    import ctr_eval.api
    import ctr_eval.submission  # noqa: F401  (a loaded submodule must not shadow a function)

    assert ctr_eval.predict is ctr_eval.api.predict and ctr_eval.evaluate is ctr_eval.api.evaluate
    assert "din" in ctr_eval.list_models()
    with pytest.raises(AttributeError, match="has no attribute 'nope'"):
        ctr_eval.nope


def test_predict_needs_a_trained_run_dir(tiny_root, tmp_path):
    with pytest.raises(FileNotFoundError, match="is not a ctr_eval run dir with a trained model"):
        ctr_eval.predict(tmp_path, tiny_root)


@pytest.mark.slow
def test_oracle_embedding_beats_random_with_the_task1_din(tiny_root, tmp_path):
    oracle = oracle_table(tiny_root)
    kw = {"batch_size": 256, "max_epochs": 4, "progress": False}
    good = ctr_eval.evaluate(tiny_root, item_info=oracle, run_dir=tmp_path / "o", **kw)
    bad = ctr_eval.evaluate(tiny_root, item_info=random_table_like(oracle), run_dir=tmp_path / "r", **kw)
    assert good["valid_auc"] > bad["valid_auc"] + 0.03, (good["valid_auc"], bad["valid_auc"])

