"""The shared trainer: batching, early stopping, determinism, resume, run-dir checks.

Uses a small stand-in split and model (the trainer only needs ``len``, ``batch(rows)``,
``label`` and a module with ``forward(batch) -> logits`` and ``regularization_loss()``), so
these tests exercise the training loop itself, independent of the DIN.
"""
from __future__ import annotations

import json
import platform
import subprocess
import sys
from ctr_eval.data import ItemTable

import numpy as np
import pytest
import torch
from torch import nn

from ctr_eval.config import resolve_config
from ctr_eval.global_batch import GlobalBatchDropout, GlobalBatchNorm1d
from ctr_eval.models import ctr_loss
from ctr_eval._runtime import global_batches, process_slice
from ctr_eval.train import (BEST_CHECKPOINT, LAST_CHECKPOINT, RESULT_FILE, RunOptions, Trainer,
                            TrainState, early_stop_step)

N_ITEMS = 60


class StandInSplit:
    """Rows whose label depends on a hidden item score plus the history (learnable)."""

    def __init__(self, n: int, seed: int, labelled: bool = True) -> None:
        g = torch.Generator().manual_seed(seed)
        quality = torch.linspace(-2.0, 2.0, N_ITEMS + 1)
        self.item_id = torch.randint(1, N_ITEMS + 1, (n,), generator=g)
        self.likes_level = torch.randint(0, 11, (n,), generator=g)
        self.views_level = torch.randint(0, 11, (n,), generator=g)
        self.item_seq = torch.randint(0, N_ITEMS + 1, (n, 8), generator=g).to(torch.int32)
        logit = quality[self.item_id] + 0.1 * (self.likes_level - 5)
        noise = torch.rand(n, generator=g)
        self.label = (torch.sigmoid(logit) > noise).float() if labelled else None

    def __len__(self) -> int:
        return self.item_id.shape[0]

    def batch(self, rows: torch.Tensor) -> dict[str, torch.Tensor]:
        out = {"item_id": self.item_id[rows], "likes_level": self.likes_level[rows],
               "views_level": self.views_level[rows], "item_seq": self.item_seq[rows].long()}
        if self.label is not None:
            out["label"] = self.label[rows]
        return out


class StandInModel(nn.Module):
    def __init__(self, cfg, table) -> None:
        super().__init__()
        self.register_buffer("item_emb", table.emb.clone())
        self.item = nn.Embedding(N_ITEMS + 1, 8)
        self.level = nn.Embedding(11, 8)
        self.proj = nn.Linear(table.emb.shape[1], 8, bias=False)
        self.mlp = nn.Sequential(nn.Linear(24, 16), nn.BatchNorm1d(16), nn.ReLU(),
                                 GlobalBatchDropout(cfg.net_dropout), nn.Linear(16, 1))
        self.reg = cfg.embedding_regularizer

    def forward(self, batch):
        item = batch["item_id"]
        x = torch.cat([self.item(item), self.level(batch["likes_level"]),
                       self.proj(self.item_emb[item])], dim=-1)
        return self.mlp(x).squeeze(-1)

    def loss(self, logits, labels):
        return ctr_loss(logits, labels)

    def regularization_loss(self):
        return (self.reg / 2) * self.item.weight.pow(2).sum()


def _table():
    g = torch.Generator().manual_seed(1)
    emb = torch.randn(N_ITEMS + 1, 16, generator=g)
    emb[0] = 0
    return ItemTable(tags=torch.zeros(N_ITEMS + 1, 5, dtype=torch.long), emb=emb)


def _trainer(run_dir, max_epochs=None, max_steps=None, **overrides):
    cfg = resolve_config("din", task1=False, **{"batch_size": 64, "epochs": 4, "net_dropout": 0.1,
                                               "learning_rate": 1e-2, **overrides})
    return Trainer(cfg, _table(), StandInSplit(800, 0), StandInSplit(300, 1), run_dir,
                   RunOptions(max_epochs=max_epochs, max_steps=max_steps, progress=False),
                   model_factory=StandInModel)


def test_max_steps_trains_only_the_first_batches_of_each_epoch(tmp_path):
    result = _trainer(tmp_path / "run", max_epochs=2, max_steps=3).fit()
    assert [h["train_samples"] for h in result["history"]] == [3 * 64, 3 * 64]
    assert result["max_steps_per_epoch"] == 3 and result["epochs_run"] == 2
    full = _trainer(tmp_path / "full", max_epochs=1).fit()
    assert full["history"][0]["train_samples"] == 800 and full["max_steps_per_epoch"] is None
    with pytest.raises(ValueError, match="max_steps"):
        RunOptions(max_steps=0).check()


def test_global_batches_cover_every_row_once_and_split_across_processes():
    batches = global_batches(1003, 100, seed=5, epoch=2, num_processes=2)
    rows = np.concatenate(batches)
    assert sorted(rows.tolist()) == list(range(1003))
    assert [len(b) for b in batches] == [100] * 9 + [103]  # a 3-row tail joins the last batch
    again = global_batches(1003, 100, seed=5, epoch=2, num_processes=2)
    assert all(np.array_equal(a, b) for a, b in zip(batches, again))
    other_epoch = global_batches(1003, 100, seed=5, epoch=3, num_processes=2)
    assert not np.array_equal(batches[0], other_epoch[0])
    parts = [process_slice(batches[-1], r, 2) for r in range(2)]
    assert [len(p) for p in parts] == [51, 52]
    assert np.array_equal(np.concatenate(parts), batches[-1])
    assert np.array_equal(np.concatenate(global_batches(10, 4, 0, 0, 1, shuffle=False)), np.arange(10))


def test_early_stop_step_follows_fuxictr_rules():
    cfg = resolve_config("din", task1=False, early_stop_patience=3, epochs=10)
    state = TrainState()
    aucs = [0.70, 0.71, 0.71 + 5e-7, 0.705, 0.72, 0.70, 0.69, 0.68, 0.9]
    improved = []
    for epoch, auc in enumerate(aucs, start=1):
        if state.finished:
            break
        improved.append(early_stop_step(state, {"epoch": epoch, "valid_auc": auc}, cfg))
    # 0.71 + 5e-7 is below best + 1e-6: no gain; 0.72 resets the count; 3 misses stop the run.
    assert improved == [True, True, False, False, True, False, False, False]
    assert (state.best_epoch, state.best_auc, state.epoch, state.finished) == (5, 0.72, 8, True)


def test_training_learns_and_writes_run_dir(tmp_path):
    result = _trainer(tmp_path / "run", max_epochs=2).fit()
    assert result["epochs_run"] == 2 and result["stopped"] == "epoch_cap"
    assert result["valid_auc"] > 0.65  # the oracle score reaches 0.81 on these rows; chance is 0.5
    assert [h["epoch"] for h in result["history"]] == [1, 2]
    assert result["history"][0]["lr"] == pytest.approx(1e-2)
    assert result["train_samples_per_s"] > 0 and result["max_epochs_cap"] == 2
    on_disk = json.loads((tmp_path / "run" / RESULT_FILE).read_text())
    assert on_disk["valid_auc"] == result["valid_auc"] and on_disk["config_hash"] == result["config_hash"]
    assert (tmp_path / "run" / BEST_CHECKPOINT).is_file() and (tmp_path / "run" / LAST_CHECKPOINT).is_file()
    assert not [p for p in (tmp_path / "run").iterdir() if p.name.endswith(".tmp")]


def test_same_seed_gives_identical_training(tmp_path):
    a = _trainer(tmp_path / "a", max_epochs=2).fit()
    b = _trainer(tmp_path / "b", max_epochs=2).fit()
    assert abs(a["valid_auc"] - b["valid_auc"]) < 1e-6
    assert [h["train_bce"] for h in a["history"]] == [h["train_bce"] for h in b["history"]]
    c = _trainer(tmp_path / "c", max_epochs=2, seed=7).fit()
    assert [h["train_bce"] for h in c["history"]] != [h["train_bce"] for h in a["history"]]


def test_resume_continues_exactly_like_an_uninterrupted_run(tmp_path):
    straight = _trainer(tmp_path / "straight", max_epochs=3).fit()
    first = _trainer(tmp_path / "resumed", max_epochs=1).fit()
    assert first["epochs_run"] == 1
    resumed = _trainer(tmp_path / "resumed", max_epochs=3).fit()
    assert resumed["epochs_run"] == 3
    keys = ("valid_auc", "valid_logloss", "train_bce", "lr")
    assert [[h[k] for k in keys] for h in resumed["history"]] == [[h[k] for k in keys] for h in straight["history"]]
    assert resumed["valid_auc"] == straight["valid_auc"]


def test_lr_decays_on_plateau_and_training_stops_early(tmp_path):
    # learning rate 0 for the embedding-free part is impossible to express; instead make
    # every epoch after the first fail to gain by demanding a huge min_delta.
    result = _trainer(tmp_path / "run", epochs=10, min_delta=0.5, early_stop_patience=2).fit()
    assert result["stopped"] == "early_stop" and result["epochs_run"] == 3
    assert [h["improved"] for h in result["history"]] == [True, False, False]
    assert [h["lr"] for h in result["history"]] == pytest.approx([1e-2, 1e-2, 1e-3])
    assert result["best_epoch"] == 1


def test_run_dir_of_another_config_is_refused(tmp_path):
    _trainer(tmp_path / "run", max_epochs=1).fit()
    with pytest.raises(ValueError, match=r"holds a different run \(config_hash"):
        _trainer(tmp_path / "run", max_epochs=1, learning_rate=5e-3).fit()


def test_run_options_are_checked():
    with pytest.raises(ValueError, match="max_epochs must be a positive integer"):
        RunOptions(max_epochs=0).check()
    with pytest.raises(ValueError, match="mixed_precision must be one of"):
        RunOptions(mixed_precision="fp8").check()
    with pytest.raises(ValueError, match="device must be one of"):
        RunOptions(device="gpu").check()
    with pytest.raises(ValueError, match="num_threads must be a positive integer or None, got 0"):
        RunOptions(num_threads=0).check()


def _global_bn_worker(rank: int, init_file: str, out_dir: str) -> None:
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    torch.set_num_threads(1)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(10, 6, generator=g) * 3 + 1
    upstream = torch.randn(10, 6, generator=g)
    bn = GlobalBatchNorm1d(6)
    with torch.no_grad():
        bn.weight.copy_(torch.linspace(0.5, 2.0, 6))
        bn.bias.copy_(torch.linspace(-1.0, 1.0, 6))
    rows = slice(0, 4) if rank == 0 else slice(4, 10)  # unequal shares on purpose
    xs = x[rows].clone().requires_grad_(True)
    (bn(xs) * upstream[rows]).sum().backward()
    torch.save({"y": bn(xs).detach(), "x_grad": xs.grad, "w_grad": bn.weight.grad, "b_grad": bn.bias.grad,
                "running_mean": bn.running_mean, "running_var": bn.running_var}, f"{out_dir}/rank{rank}.pt")
    dist.destroy_process_group()


def test_global_batch_norm_across_two_processes_equals_one_batch_norm(tmp_path):
    import torch.multiprocessing as mp

    mp.spawn(_global_bn_worker, args=(str(tmp_path / "pg"), str(tmp_path)), nprocs=2, join=True)
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt") for r in range(2))
    g = torch.Generator().manual_seed(0)
    x = (torch.randn(10, 6, generator=g) * 3 + 1).requires_grad_(True)
    upstream = torch.randn(10, 6, generator=g)
    ref = nn.BatchNorm1d(6)
    with torch.no_grad():
        ref.weight.copy_(torch.linspace(0.5, 2.0, 6))
        ref.bias.copy_(torch.linspace(-1.0, 1.0, 6))
    (ref(x) * upstream).sum().backward()
    # the second forward in each worker updated the running stats again: compare after one
    # more reference forward on the same global batch
    y_ref = ref(x).detach()
    close = dict(rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(torch.cat([r0["y"], r1["y"]]), y_ref, **close)
    torch.testing.assert_close(torch.cat([r0["x_grad"], r1["x_grad"]]), x.grad, **close)
    # each process holds its share of the parameter gradient; DDP sums/averages them
    torch.testing.assert_close(r0["w_grad"] + r1["w_grad"], ref.weight.grad, **close)
    torch.testing.assert_close(r0["b_grad"] + r1["b_grad"], ref.bias.grad, **close)
    for key in ("running_mean", "running_var"):
        torch.testing.assert_close(r0[key], getattr(ref, key), **close)
        torch.testing.assert_close(r1[key], getattr(ref, key), **close)


_MEMORY_PROBE = """
import resource, torch
from ctr_eval._runtime import reuse_freed_memory

def faults_of_repeats(n=3):
    for _ in range(2):  # warm-up: the heap grows to its working size here
        torch.ones(64 * 2**20 // 4)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(n):
        torch.ones(64 * 2**20 // 4)  # 64 MB = 16384 pages: allocated, filled, freed
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before

outside = faults_of_repeats()
with reuse_freed_memory():
    inside = faults_of_repeats()
print(outside, inside)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc",
                    reason="glibc's malloc settings")
def test_reuse_freed_memory_gives_freed_pages_to_the_next_tensor_without_page_faults():
    # a fresh process: the heap of this one already holds whatever earlier tests freed
    out = subprocess.run([sys.executable, "-c", _MEMORY_PROBE], capture_output=True, text=True, check=True)
    outside, inside = map(int, out.stdout.split())
    pages = 64 * 2**20 // 4096
    assert outside > 2.5 * pages  # glibc's default: every 64 MB tensor comes as fresh pages
    assert inside < 1.1 * pages  # at most one of the three (glibc may still move a block once)


def test_cpu_threads_follow_omp_num_threads_when_set(monkeypatch):
    from ctr_eval import default_cpu_threads

    monkeypatch.setattr("os.cpu_count", lambda: 8)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    assert (default_cpu_threads(), default_cpu_threads(2), default_cpu_threads(16)) == (8, 4, 1)
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # a job sharing the machine
    assert default_cpu_threads() == 1 and default_cpu_threads(2) == 1
    monkeypatch.setenv("OMP_NUM_THREADS", "")  # set but empty: ignored
    assert default_cpu_threads(2) == 4
