"""Heads that learn from train histories: the shared loop, the contrastive head, and how
extract feeds them (train histories only)."""
from __future__ import annotations

import json
import logging
import os
import socket
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from mmembed.api import extract, history_rows
from mmembed.datasets import MissingFileError
from mmembed.datasets.histories import load_train_histories
from mmembed.fusion import create_fusion, load_fusion
from mmembed.fusion._pairs import WindowSampler, count_log_q, item_counts, split_histories, window_pairs
from mmembed.fusion._train_loop import LoopOptions, info_nce
from mmembed.fusion.contrastive import ContrastiveFusion

pytestmark = pytest.mark.usefixtures("one_thread")

N_CLUSTERS, PER_CLUSTER = 6, 20
N_ITEMS = N_CLUSTERS * PER_CLUSTER
# about 17 steps a pass over the planted histories' pairs
FAST = {"dim": 8, "hidden": 32, "max_steps": 100, "batch_size": 128, "patience": 6, "residual": False}


# -- planted data: items in clusters, histories within a cluster -----------------------------
def _planted(seed: int = 0, noise: float = 1.2) -> tuple[dict, np.ndarray, np.ndarray]:
    """(features, histories, cluster of each item). Both feature blocks are noisy views
    of the item's cluster factor (noise about as strong as the signal); each history
    stays within one cluster."""
    rng = np.random.default_rng(seed)
    cluster = np.repeat(np.arange(N_CLUSTERS), PER_CLUSTER)
    factors = rng.normal(size=(N_CLUSTERS, 6))
    signal = factors[cluster] @ rng.normal(size=(6, 12))
    text = signal + noise * rng.normal(size=(N_ITEMS, 12))
    image = factors[cluster] @ rng.normal(size=(6, 6)) + 1.5 * noise * rng.normal(size=(N_ITEMS, 6))
    histories = np.zeros((300, 12), dtype=np.int64)
    for row in histories:
        members = np.flatnonzero(cluster == rng.integers(N_CLUSTERS))
        length = rng.integers(4, 13)
        row[-length:] = rng.choice(members, size=length) + 1
    return {"text": text.astype(np.float32), "image": image.astype(np.float32)}, histories, cluster


def _cosine(x: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    x = x / np.linalg.norm(x, axis=1, keepdims=True)
    return (x[a] * x[b]).sum(axis=1)


def _gap(x: np.ndarray, histories: np.ndarray) -> float:
    """Mean cosine of items co-occurring within 3 positions minus that of random pairs."""
    pairs = window_pairs(histories, 3)
    rng = np.random.default_rng(1)
    random = rng.integers(0, N_ITEMS, size=(4000, 2))
    random = random[random[:, 0] != random[:, 1]]
    return float(_cosine(x, *pairs.T).mean() - _cosine(x, *random.T).mean())


@pytest.fixture(scope="module")
def planted_fit():
    features, histories, cluster = _planted()
    head = ContrastiveFusion(**FAST).fit(features, histories)
    return head, features, histories, cluster


def test_co_occurring_items_end_closer_than_random_pairs_and_than_in_the_features(planted_fit):
    head, features, histories, _ = planted_fit
    learned = _gap(head.transform(features), histories)
    raw = _gap(np.concatenate([features["text"], features["image"]], axis=1), histories)
    assert learned > 0.5, learned
    assert learned > raw + 0.2, (learned, raw)


def test_items_absent_from_every_history_still_get_content_vectors(planted_fit):
    head, features, histories, cluster = planted_fit
    # Refit without any history touching three items of each cluster: their vectors come
    # from content alone and still sit with their cluster.
    unseen = (np.arange(N_CLUSTERS)[:, None] * PER_CLUSTER + np.array([1, 2, 3])).ravel()  # row + 1
    kept = histories.copy()
    kept[np.isin(kept, unseen)] = 0
    again = ContrastiveFusion(**FAST).fit(features, kept)
    assert again.item_counts_[unseen - 1].sum() == 0
    out = again.transform(features)
    out /= np.linalg.norm(out, axis=1, keepdims=True)
    seen = np.setdiff1d(np.arange(N_ITEMS), unseen - 1)
    centroids = np.stack([out[seen[cluster[seen] == c]].mean(axis=0) for c in range(N_CLUSTERS)])
    nearest = np.argmax(out[unseen - 1] @ centroids.T, axis=1)
    assert (nearest == cluster[unseen - 1]).mean() >= 2 / 3  # chance: 1 / 6


def test_training_history_and_early_stopping(planted_fit):
    head, *_ = planted_fit
    # evaluated after every pass (about 17 steps here) and once more when the budget ends
    steps = [h["step"] for h in head.history_]
    assert [h["pass"] for h in head.history_[:-1]] == list(range(1, len(head.history_)))
    assert steps[-1] == head.steps_ == 100 and head.stopped_ == "max_steps"
    assert steps == sorted(steps) and 14 <= steps[0] <= 20
    assert head.history_[-1]["train_loss"] < head.history_[0]["train_loss"]
    assert head.n_held_out_pairs_ > 0 and head.best_step_ in steps
    features, histories, _ = _planted()
    # A learning rate that wrecks the network after the first passes: held-out loss rises,
    # training stops `patience` evaluations after the best one and keeps the best weights.
    wild = ContrastiveFusion(**{**FAST, "max_steps": 240, "eval_every": 10, "learning_rate": 3.0,
                                "patience": 2}).fit(features, histories)
    assert [h["step"] for h in wild.history_] == list(range(10, 10 * len(wild.history_) + 1, 10))
    best = min(h["held_out_loss"] for h in wild.history_)
    at_best = [h["step"] for h in wild.history_].index(wild.best_step_)
    assert wild.history_[at_best]["held_out_loss"] == best
    if wild.stopped_ == "early_stop":
        assert len(wild.history_) == at_best + 3 and wild.steps_ < 240
    else:  # never got worse twice in a row: then it spent the whole budget
        assert wild.steps_ == 240


def test_residual_shrinks_rare_items_and_stays_off_unseen_ones():
    features, histories, _ = _planted()
    histories = histories.copy()
    histories[histories == 5] = 6  # item row 4 never occurs ...
    histories[0, -1] = 5  # ... but once, in the first history
    histories[1:, :][histories[1:, :] == 5] = 6
    head = ContrastiveFusion(**{**FAST, "residual": True, "holdout": 0.0}).fit(features, histories)
    counts = head.item_counts_
    assert counts[4] == 1
    frequent = int(np.argmax(counts))
    norms = np.linalg.norm(head.residual_vectors(), axis=1)
    assert norms[4] < norms[frequent]
    assert norms[4] < 0.5 * np.median(norms[counts >= 10])
    never = np.flatnonzero(counts == 0)
    assert np.all(norms[never] == 0)
    # An item seen once adds at most 1 / (1 + residual_shrink) of its free vector.
    assert head.net_.residual.shrink[4].item() == pytest.approx(1 / 6)


def test_residual_ties_the_head_to_the_fit_rows(planted_fit):
    features, histories, _ = _planted()
    fewer = {k: v[:50] for k, v in features.items()}
    with_residual = ContrastiveFusion(**{**FAST, "max_steps": 17, "residual": True}).fit(features, histories)
    with pytest.raises(ValueError, match=r"fitted with residual=True on 120 items, got 50"):
        with_residual.transform(fewer)
    with pytest.raises(ValueError, match="residual=False"):
        planted_fit[0].residual_vectors()
    plain = planted_fit[0]
    np.testing.assert_array_equal(plain.transform(fewer), plain.transform(features)[:50])


def test_residual_dropout_drops_rows_at_its_rate_in_training_only():
    from mmembed.fusion.contrastive import ShrunkResidual

    def module() -> ShrunkResidual:
        res = ShrunkResidual(np.ones(1000, np.float32), 2)
        torch.nn.init.ones_(res.embedding.weight)
        res.enable_dropout(0.3, seed=7)
        return res

    res, twin, rows = module(), module(), torch.arange(1000)
    masks = []
    for _ in range(50):
        out = res(rows)
        masks.append((out[:, 0] == 0).numpy())
        np.testing.assert_array_equal(twin(rows).detach().numpy(), out.detach().numpy())  # (row, call, seed) fix it
    masks = np.array(masks)
    assert masks.mean() == pytest.approx(0.3, abs=0.01)
    assert int(res.training_calls) == 50
    # another call drops other rows: every row is dropped sometimes and kept sometimes
    assert masks.any(axis=0).mean() > 0.99 and (~masks).any(axis=0).all()
    # a subset of rows gets the same decision as within the whole batch
    sub = torch.tensor([5, 17, 999])
    fresh = module()
    np.testing.assert_array_equal((fresh(sub)[:, 0] == 0).numpy(), masks[0][[5, 17, 999]])
    res.eval()
    assert (res(rows)[:, 0] == 1).all() and int(res.training_calls) == 50


def test_residual_dropout_changes_the_fit_and_saves_with_it(tmp_path):
    features, histories, _ = _planted()
    params = {**FAST, "max_steps": 34, "residual": True}
    plain = ContrastiveFusion(**params).fit(features, histories)
    dropped = ContrastiveFusion(**params, residual_dropout=0.5).fit(features, histories)
    # the kept weights are the best evaluation's, and so is the call counter saved with them
    assert int(dropped.net_.residual.training_calls) == dropped.best_step_ > 0
    assert not np.allclose(plain.transform(features), dropped.transform(features))
    dropped.save(tmp_path / "head")
    loaded = load_fusion(tmp_path / "head")
    assert loaded.residual_dropout == 0.5
    np.testing.assert_array_equal(loaded.transform(features), dropped.transform(features))


@pytest.mark.parametrize("head_name", ["contrastive", "gated"])
def test_residual_after_content_fits_the_content_network_alone_then_the_residual(head_name):
    features, histories, _ = _planted()
    params = {**FAST, "max_steps": 34, "residual": True}
    content_only = create_fusion({"name": head_name, **params, "residual": False}).fit(features, histories)
    staged = create_fusion({"name": head_name, **params, "residual_stage": "after"}).fit(features, histories)
    # stage one is the content-only fit, to the bit; stage two leaves the network alone
    content_weights = {k: v for k, v in staged.net_.state_dict().items() if not k.startswith("residual.")}
    assert content_weights.keys() == content_only.net_.state_dict().keys()
    for name, value in content_only.net_.state_dict().items():
        torch.testing.assert_close(content_weights[name], value, rtol=0, atol=0)
    # the residual learnt on top of the fixed content: seen items moved, and the held-out
    # loss of stage two starts where stage one ended and goes below it
    assert np.linalg.norm(staged.residual_vectors(), axis=1).max() > 0.05
    stages = [record["stage"] for record in staged.history_]
    assert stages == sorted(stages) and set(stages) == {1, 2}
    best_content = min(r["held_out_loss"] for r in staged.history_ if r["stage"] == 1)
    best_residual = min(r["held_out_loss"] for r in staged.history_ if r["stage"] == 2)
    assert best_content == pytest.approx(min(r["held_out_loss"] for r in content_only.history_))
    assert best_residual < best_content
    # steps and the best step count on across the stages
    assert staged.best_step_ > content_only.steps_ and staged.steps_ > content_only.steps_
    assert staged.stopped_.startswith(f"content {content_only.stopped_}, residual ")


def test_a_two_stage_fit_killed_in_its_second_stage_resumes_identically(tmp_path):
    features, histories, _ = _planted()
    params = {**RESUMABLE, "residual_stage": "after"}
    straight = ContrastiveFusion(**params).fit(features, histories)
    _fit_killed_at(70 + 25, features, histories, tmp_path, residual_stage="after")
    assert (tmp_path / "content" / "fit_checkpoint.pt").is_file()
    assert (tmp_path / "residual" / "fit_checkpoint.pt").is_file()
    resumed = ContrastiveFusion(**params, checkpoint_dir=str(tmp_path)).fit(features, histories)
    np.testing.assert_array_equal(resumed.transform(features), straight.transform(features))
    assert resumed.history_ == straight.history_ and resumed.best_step_ == straight.best_step_


def test_save_and_load_keep_the_residual(tmp_path):
    features, histories, _ = _planted()
    head = ContrastiveFusion(**{**FAST, "max_steps": 34, "residual": True}).fit(features, histories)
    head.save(tmp_path / "head")
    loaded = load_fusion(tmp_path / "head")
    np.testing.assert_array_equal(loaded.transform(features), head.transform(features))
    np.testing.assert_array_equal(loaded.residual_vectors(), head.residual_vectors())
    assert loaded.history_ == head.history_ and loaded.best_step_ == head.best_step_
    assert loaded.steps_ == head.steps_ == 34


def test_a_head_saved_before_step_budgets_still_loads(tmp_path):
    # heads of mmembed <= 0.x counted epochs: `epochs` among the parameters, `best_epoch`
    # in the state; they load, and transform as before (from a folder of the per-head
    # layout, tests/data/saved_heads_v1, turned into one of the epoch days)
    import shutil

    from test_fusion_contract import _features

    saved = Path(__file__).resolve().parent / "data" / "saved_heads_v1" / "contrastive"
    shutil.copytree(saved, tmp_path / "head")
    config_path = tmp_path / "head" / "fusion.json"
    config = json.loads(config_path.read_text())
    for name in ("max_steps", "eval_every", "checkpoint_dir"):
        del config["params"][name]
    config["params"]["epochs"] = 10
    config["state"]["best_epoch"] = 2
    for name in ("best_step", "steps"):
        del config["state"][name]
    config_path.write_text(json.dumps(config))
    old = load_fusion(tmp_path / "head")
    np.testing.assert_array_equal(old.transform(_features()), np.load(saved / "expected_transform.npy"))
    assert old.best_step_ == 2 and old.max_steps == 15_000


# -- step budget, determinism, resume ----------------------------------------------------------------
RESUMABLE = {**FAST, "max_steps": 70, "eval_every": 10, "residual": True}


class _Killed(Exception):
    pass


def _fit_killed_at(step: int, features, histories, checkpoint_dir, dropout: float = 0.0, **params) -> None:
    """Fit until ``step`` training steps were taken in this call, then die as a killed run would."""
    from mmembed.fusion import _train_loop

    original, calls = _train_loop._Run._train_step, []

    def dying(run, batch):
        calls.append(1)
        if len(calls) > step:
            raise _Killed
        original(run, batch)

    _train_loop._Run._train_step = dying
    try:
        with pytest.raises(_Killed):
            ContrastiveFusion(**{**RESUMABLE, **params}, residual_dropout=dropout,
                              checkpoint_dir=str(checkpoint_dir)).fit(features, histories)
    finally:
        _train_loop._Run._train_step = original


@pytest.mark.parametrize("dropout", [0.0, 0.4])
def test_a_step_budget_fit_is_deterministic_and_resumes_identically(tmp_path, dropout):
    features, histories, _ = _planted()
    params = {**RESUMABLE, "residual_dropout": dropout}
    straight = ContrastiveFusion(**params).fit(features, histories)
    again = ContrastiveFusion(**params).fit(features, histories)
    np.testing.assert_array_equal(again.transform(features), straight.transform(features))
    assert straight.steps_ == 70 and len(straight.history_) == 7
    # killed after step 37 (last checkpoint: step 30), then again after 25 more steps
    # (last checkpoint: step 60): the third run finishes where a straight run ends
    _fit_killed_at(37, features, histories, tmp_path, dropout)
    assert (tmp_path / "fit_checkpoint.pt").is_file()
    _fit_killed_at(25, features, histories, tmp_path, dropout)
    resumed = ContrastiveFusion(**params, checkpoint_dir=str(tmp_path)).fit(features, histories)
    np.testing.assert_array_equal(resumed.transform(features), straight.transform(features))
    assert resumed.history_ == straight.history_ and resumed.best_step_ == straight.best_step_
    # a finished fit's checkpoint answers a rerun without training
    from mmembed.fusion import _train_loop

    original = _train_loop._Run._train_step
    _train_loop._Run._train_step = None  # any training step would fail
    try:
        rerun = ContrastiveFusion(**params, checkpoint_dir=str(tmp_path)).fit(features, histories)
    finally:
        _train_loop._Run._train_step = original
    np.testing.assert_array_equal(rerun.transform(features), straight.transform(features))


def test_a_fit_killed_right_after_a_pass_ends_resumes_identically(tmp_path):
    # evaluated (and checkpointed) at each pass's end: the checkpoint's position is the
    # pass's last batch, and the resumed fit goes on with the next pass
    features, histories, _ = _planted()
    params = {**RESUMABLE, "eval_every": None}
    straight = ContrastiveFusion(**params).fit(features, histories)
    pass_steps = straight.history_[0]["step"]
    assert straight.history_[1]["pass"] == 2 and straight.steps_ > pass_steps
    _fit_killed_at(pass_steps, features, histories, tmp_path, eval_every=None)
    resumed = ContrastiveFusion(**params, checkpoint_dir=str(tmp_path)).fit(features, histories)
    np.testing.assert_array_equal(resumed.transform(features), straight.transform(features))
    assert resumed.history_ == straight.history_


def test_a_checkpoint_of_other_inputs_is_not_resumed(tmp_path, caplog):
    features, histories, _ = _planted()
    ContrastiveFusion(**RESUMABLE, checkpoint_dir=str(tmp_path)).fit(features, histories)
    other = histories[::-1].copy()
    with caplog.at_level(logging.WARNING):
        head = ContrastiveFusion(**RESUMABLE, checkpoint_dir=str(tmp_path)).fit(features, other)
    assert "belongs to another fit" in caplog.text
    fresh = ContrastiveFusion(**RESUMABLE).fit(features, other)
    np.testing.assert_array_equal(head.transform(features), fresh.transform(features))


# -- bad input ------------------------------------------------------------------------------------
def test_bad_sequences_and_parameters_are_refused():
    features, histories, _ = _planted()
    head = ContrastiveFusion(**FAST)
    with pytest.raises(ValueError, match="learns from user histories"):
        head.fit(features)
    with pytest.raises(TypeError, match="integer array, got dtype float64"):
        head.fit(features, histories.astype(float))
    with pytest.raises(ValueError, match="must be 2-D"):
        head.fit(features, histories[0])
    with pytest.raises(ValueError, match=r"hold 121, outside 0\.\.120"):
        head.fit(features, np.where(histories == 1, N_ITEMS + 1, histories))
    with pytest.raises(ValueError, match="no pair of distinct items"):
        head.fit(features, np.ones((5, 4), np.int64))
    for params, error, message in [
        ({"dim": 0}, ValueError, "contrastive: dim must be a positive integer"),
        ({"window": 2.5}, TypeError, "contrastive: window must be a positive integer"),
        ({"temperature": 0}, ValueError, "temperature must be a finite number > 0"),
        ({"temperature": "hot"}, TypeError, "temperature must be a number"),
        ({"holdout": 1.0}, ValueError, "holdout must be a finite number >= 0.0 and < 1.0"),
        ({"residual": "yes"}, TypeError, "residual must be True or False"),
        ({"residual_shrink": -1.0}, ValueError, "residual_shrink must be a finite number >= 0"),
        ({"residual_dropout": 1.0}, ValueError, "residual_dropout must be a finite number >= 0.0 and < 1.0"),
        ({"residual_dropout": 0.5, "residual": False}, ValueError, "residual_dropout needs residual=True"),
        ({"residual_stage": "first"}, ValueError, "residual_stage must be one of 'joint', 'after', got 'first'"),
        ({"residual_stage": "after", "residual": False}, ValueError, "residual_stage='after' needs residual=True"),
        ({"residual_stage": "after", "residual": True, "residual_dropout": 0.2}, ValueError,
         "set residual_dropout to 0"),
        ({"logq_correction": 1.5}, ValueError, "logq_correction must be a finite number >= 0.0 and <= 1.0"),
        ({"learning_rate": 0.0}, ValueError, "learning_rate must be a finite number > 0"),
        ({"max_steps": 0}, ValueError, "contrastive: max_steps must be a positive integer"),
        ({"eval_every": 0}, ValueError, "contrastive: eval_every must be a positive integer"),
        ({"checkpoint_dir": 3}, TypeError, "checkpoint_dir must be None or a folder path"),
        ({"device": "gpu"}, ValueError, "device must be None, 'cpu' or 'cuda'"),
    ]:
        with pytest.raises(error, match=message):
            ContrastiveFusion(**{**FAST, **params}).fit(features, histories)


# -- pieces of the loop -----------------------------------------------------------------------------
def test_window_pairs_counts_and_held_out_split():
    seqs = np.array([[0, 0, 3, 1, 3, 2], [0, 0, 0, 0, 0, 4]])
    assert window_pairs(seqs, 1).tolist() == [[2, 0], [0, 2], [2, 1]]
    assert sorted(map(tuple, window_pairs(seqs, 2).tolist())) == [(0, 1), (0, 2), (2, 0), (2, 1)]
    assert item_counts(seqs, 5).tolist() == [1, 1, 2, 1, 0]
    held = split_histories(50, 0.1, seed=3)
    assert held.sum() == 5 and np.array_equal(held, split_histories(50, 0.1, seed=3))
    assert not np.array_equal(held, split_histories(50, 0.1, seed=4))
    assert split_histories(3, 0.1, seed=0).sum() == 1 and split_histories(3, 0.0, seed=0).sum() == 0
    log_q = count_log_q(np.array([2, 1, 1, 0]))
    np.testing.assert_allclose(np.exp(log_q), [0.5, 0.25, 0.25, 0.125])


def test_window_sampler_draws_every_pair_in_the_window_and_nothing_else():
    seqs = np.array([[0, 0, 1, 2, 3, 4, 5], [0, 0, 0, 0, 0, 6, 6], [0, 0, 0, 0, 0, 0, 7]])
    sampler = WindowSampler(seqs, window=2, seed=0)
    assert len(sampler) == 7  # 5 + 2 positions with a partner; the lone 7 has none
    seen = set()
    for epoch in range(200):
        pairs = sampler(epoch)
        assert len(pairs) == 5  # the repeated 6 pairs with itself only: dropped
        assert sorted(pairs[:, 0].tolist()) == [0, 1, 2, 3, 4]  # every click a query once
        seen |= set(map(tuple, pairs.tolist()))
    within = {(a, b) for a, b in map(tuple, window_pairs(seqs[:1], 2).tolist())}
    assert seen == within | {(b, a) for a, b in within}
    np.testing.assert_array_equal(sampler(3), WindowSampler(seqs, 2, seed=0)(3))
    assert not np.array_equal(sampler(3), sampler(4))


def test_info_nce_matches_a_hand_computation():
    g = torch.Generator().manual_seed(0)
    q, k = torch.randn(3, 4, generator=g), torch.randn(3, 4, generator=g)
    positives, q_rows, k_rows = torch.arange(3), torch.tensor([10, 11, 12]), torch.tensor([20, 21, 20])
    log_q = torch.tensor([-1.0, -2.0, -1.0])
    out = info_nce(q, k, positives, q_rows, k_rows, log_q, temperature=0.5)
    logits = q @ k.T / 0.5 - log_q
    expected = []
    for i in range(3):
        keep = [j for j in range(3) if j == i or k_rows[j] != k_rows[i]]  # same item: no negative
        expected.append(torch.logsumexp(logits[i, keep], 0) - logits[i, i])
    torch.testing.assert_close(out, torch.stack(expected))
    # the query's own item among the keys is no negative either
    own = info_nce(q, k, positives, torch.tensor([21, 11, 12]), torch.tensor([20, 21, 22]), None, temperature=0.5)
    plain = q @ k.T / 0.5
    torch.testing.assert_close(own[0], torch.logsumexp(plain[0, [0, 2]], 0) - plain[0, 0])


def test_loop_options_are_checked():
    with pytest.raises(ValueError, match="x: batch_size must be a positive integer"):
        LoopOptions(batch_size=0).check("x")
    with pytest.raises(TypeError, match="x: seed must be an integer"):
        LoopOptions(seed=1.5).check("x")
    with pytest.raises(ValueError, match="x: weight_decay must be a finite number >= 0"):
        LoopOptions(weight_decay=-1.0).check("x")


# -- one process or two ------------------------------------------------------------------------------
# with residual dropout: both processes must drop the same items' residuals each step
TWO_PROCESS_PARAMS = {**FAST, "max_steps": 60, "residual": True, "residual_dropout": 0.3, "batch_size": 100}


def _two_process_worker(rank: int, port: int, out_dir: str) -> None:
    os.environ.update({"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "RANK": str(rank),
                       "LOCAL_RANK": str(rank), "WORLD_SIZE": "2", "LOCAL_WORLD_SIZE": "2"})
    torch.set_num_threads(1)
    features, histories, _ = _planted()
    head = ContrastiveFusion(**TWO_PROCESS_PARAMS).fit(features, histories)
    assert head.processes_ == 2
    np.save(f"{out_dir}/rank{rank}.npy", head.transform(features))
    np.save(f"{out_dir}/history{rank}.npy", np.array([[h["train_loss"], h["held_out_loss"]] for h in head.history_]))
    torch.distributed.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_two_processes_train_the_one_process_head(tmp_path):
    import torch.multiprocessing as mp

    mp.spawn(_two_process_worker, args=(_free_port(), str(tmp_path)), nprocs=2, join=True)
    features, histories, _ = _planted()
    one = ContrastiveFusion(**TWO_PROCESS_PARAMS).fit(features, histories)
    expected = one.transform(features)
    assert one.processes_ == 1
    for rank in (0, 1):
        np.testing.assert_allclose(np.load(tmp_path / f"rank{rank}.npy"), expected, atol=2e-5)
        np.testing.assert_allclose(
            np.load(tmp_path / f"history{rank}.npy"),
            [[h["train_loss"], h["held_out_loss"]] for h in one.history_], rtol=1e-5)
    # and training moved the head: not a trivially equal untrained network
    assert one.history_[-1]["train_loss"] < one.history_[0]["train_loss"]


# -- train histories of a dataset ----------------------------------------------------------------
def _write_histories(path, users, seqs) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table({"user_id": pa.array(users, pa.int64()),
                             "item_seq": pa.array([list(s) for s in seqs], pa.list_(pa.int64()))}), path)


def test_train_histories_keep_each_users_longest_distinct_windows(tmp_path):
    root = tmp_path / "data"
    # user 1: rows repeat a history and its starts; user 2: a window that extends no other
    _write_histories(root / "MicroLens_1M_x1" / "train.parquet", [1, 1, 1, 1, 2, 2, 3],
                     [[0, 0, 0, 5], [0, 0, 5, 6], [0, 0, 5, 6], [0, 0, 0, 0], [0, 7, 8, 9], [0, 0, 8, 7], [0, 0, 0, 5]])
    _write_histories(root / "item_seq.parquet", [1, 2], [[0, 5, 6, 7], [0, 0, 7, 8]])
    histories = load_train_histories(root)
    got = sorted(zip(histories.user_id.tolist(), map(tuple, histories.item_seq.tolist())))
    assert got == [(1, (0, 5, 6, 7)), (2, (0, 0, 8, 7)), (2, (0, 7, 8, 9)), (3, (0, 0, 0, 5))]
    assert histories.rows_read == 9 and len(histories.sources) == 2
    assert load_train_histories(root, max_len=2).item_seq.shape[1] == 2


def test_train_histories_need_a_file_and_ids_map_to_rows(tmp_path, caplog):
    (tmp_path / "data" / "MicroLens_1M_x1").mkdir(parents=True)
    (tmp_path / "data" / "item_feature.parquet").write_bytes(b"")
    with pytest.raises(MissingFileError, match="no train histories"):
        load_train_histories(tmp_path / "data")
    ids = np.array([30, 10, 20])
    with caplog.at_level(logging.WARNING):
        rows = history_rows(np.array([[0, 10, 20, 99], [30, 30, 0, 10]]), ids)
    assert rows.tolist() == [[0, 2, 3, 0], [1, 1, 0, 2]]
    assert "1 click(s) on 1 item id(s) absent from the catalog" in caplog.text


# -- through extract -----------------------------------------------------------------------------
EXTRACT_HEAD = {"name": "contrastive", "dim": 8, "hidden": 16, "max_steps": 10, "batch_size": 512}


@pytest.fixture(scope="module")
def feature_cache(tmp_path_factory):
    return tmp_path_factory.mktemp("features")


def _poison(path, seed: int) -> None:
    table = pq.read_table(path)
    rng = np.random.default_rng(seed)
    seqs = rng.integers(1, 601, size=(table.num_rows, len(table.column("item_seq")[0])))
    column = pa.array([list(s) for s in seqs], table.schema.field("item_seq").type)
    pq.write_table(table.set_column(table.schema.get_field_index("item_seq"), "item_seq", column), path)


def test_extract_learns_from_train_histories_only(tiny_root, tiny_copy, feature_cache):
    clean = extract(tiny_root, encoders="sbert", fusion=EXTRACT_HEAD, dim=None,
                    cache_dir=feature_cache, progress=False)
    for i, split in enumerate(("valid", "test")):
        _poison(tiny_copy / "MicroLens_1M_x1" / f"{split}.parquet", seed=i)
    poisoned = extract(tiny_copy, encoders="sbert", fusion=EXTRACT_HEAD, dim=None,
                       cache_dir=feature_cache, progress=False)
    np.testing.assert_array_equal(poisoned.vectors, clean.vectors)
    record = clean.provenance["fusion"]["sequences"]
    assert [os.path.basename(p) for p in record["source"]] == ["train.parquet", "item_seq.parquet"]
    assert record["n_histories"] > 0 and clean.vectors.shape == (600, 8)
    # The histories are what extract passes: the train ones, mapped to catalog rows.
    from mmembed.datasets import ItemCatalog

    catalog = ItemCatalog.from_dir(tiny_root)
    seqs = history_rows(load_train_histories(tiny_root).item_seq, catalog.item_ids)
    assert record["n_histories"] == len(seqs)
    from mmembed.cache import encode_cached
    from mmembed.encoders import create_encoder

    feats = {"sbert": encode_cached(create_encoder("sbert"), catalog, cache_dir=feature_cache, progress=False)}
    np.testing.assert_array_equal(create_fusion(EXTRACT_HEAD).fit_transform(feats, seqs), clean.vectors)


def test_a_sequence_head_without_histories_stops_before_encoding(tiny_copy, monkeypatch):
    from mmembed.encoders.base import Encoder

    def refuse(*args, **kwargs):
        raise AssertionError("an encoder ran before the missing histories were reported")

    monkeypatch.setattr(Encoder, "encode", refuse)
    with pytest.raises(ValueError, match=r"fusion 'contrastive' learns from train histories, but the items come from records"):
        extract([{"title": "a cat"}, {"title": "a dog"}], encoders="sbert", fusion=EXTRACT_HEAD, dim=None)
    for name in ("MicroLens_1M_x1/train.parquet", "item_seq.parquet"):
        (tiny_copy / name).unlink()
    with pytest.raises(MissingFileError, match="no train histories"):
        extract(tiny_copy, encoders="sbert", fusion=EXTRACT_HEAD, dim=None)


@pytest.mark.skipif((os.cpu_count() or 1) < 2, reason="the drift came from several CPU threads")
def test_a_fit_on_several_threads_is_bit_reproducible():
    # big enough for the loop to train on every core (_cpu_threads); a repeated item's rows
    # once summed their gradients in a varying order there, and two fits drifted apart
    from mmembed.fusion._train_loop import _cpu_threads

    rng = np.random.default_rng(3)
    n = 3000
    factors = rng.normal(size=(n, 6))
    features = {"a": (factors @ rng.normal(size=(6, 48))).astype(np.float32),
                "b": (factors @ rng.normal(size=(6, 16))).astype(np.float32)}
    histories = np.zeros((1500, 16), np.int64)
    for row in histories:
        length, start = rng.integers(4, 17), rng.integers(n)
        row[-length:] = (start + rng.integers(0, 30, length)) % n + 1
    params = dict(dim=32, hidden=32, max_steps=40, eval_every=20, batch_size=512, residual=True, device="cpu")
    first = ContrastiveFusion(**params).fit(features, histories)
    assert _cpu_threads(first.net_, 512, 1) == os.cpu_count()
    second = ContrastiveFusion(**params).fit(features, histories)
    assert first.history_ == second.history_
    np.testing.assert_array_equal(first.transform(features), second.transform(features))
