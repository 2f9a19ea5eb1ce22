"""One trainer for every ctr_eval model, on Accelerate (CPU, one GPU, or many processes).

Training follows FuxiCTR 2.3's ``BaseModel`` (``fuxictr/pytorch/models/rank_model.py``), which
the challenge's DIN inherits; each rule is named where it is applied:

- loss = ``model.loss(logits, labels)`` (binary cross-entropy of the sigmoid output, mean
  over the batch, as FuxiCTR's ``get_loss("binary_crossentropy")``) +
  ``model.regularization_loss()``, every batch (``BaseModel.compute_loss``);
- Adam with the config's learning rate (``BaseModel.compile`` -> ``get_optimizer``), fused
  (:func:`make_optimizer`);
- gradients clipped to total L2 norm 10 before each step (``BaseModel.train_step``,
  ``fit(max_gradient_norm=10.)``);
- validation once per epoch; an epoch improves when AUC >= best + 1e-6; otherwise the
  patience counter grows and the learning rate is multiplied by 0.1, not below 1e-6
  (``checkpoint_and_earlystop`` with ``reduce_lr_on_plateau=True`` -> ``lr_decay``); training
  stops when the counter reaches ``early_stop_patience``; the best weights are kept and
  reloaded at the end (``save_best_only`` / ``load_weights``).

Several processes (``accelerate launch --multi_gpu --num_processes P`` or ``torchrun
--nproc_per_node P``, also on a CPU-only machine; see ``ctr_eval.cli``): every epoch has one global
shuffle (seeded by config seed and epoch), cut into global batches of ``batch_size``; process
r takes the r-th contiguous slice of each global batch, so each process sees
``batch_size / P`` rows per step. Each process scales its summed BCE by ``P / m`` (m = rows
in the global batch), so DDP's gradient average equals the one-process batch mean exactly.
Batch norm uses the global batch's statistics (SyncBatchNorm on GPUs, an all-reduce batch
norm on CPU), and the MLP dropout masks are drawn for the whole global batch from a generator
seeded the same on every process, each process keeping its rows
(:class:`ctr_eval.global_batch.GlobalBatchDropout`). So P processes train the one-process model
with the one-process masks, and differ from it only by float summation order (the dropout
inside TransAct's nn.TransformerEncoder layers is the exception: it draws per process).
Evaluation splits rows contiguously across processes and gathers the scores back into row
order.

Determinism: the shuffle, the dropout generator (from (seed, epoch)) and every process's
torch/numpy/python RNGs (from (seed, epoch, rank)) are re-seeded at the start of each
epoch, so a run resumed from an epoch checkpoint continues exactly as an uninterrupted
one. On CPU, MKL's dynamic threading is switched off (``_runtime.pin_mkl_threads``) so that
a busy machine cannot change the summation order.
"""
from __future__ import annotations

import dataclasses
import functools
import logging
import math
import os
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from accelerate import Accelerator
from accelerate.utils import send_to_device, set_seed
from ctr_eval.progress import progress as progress_of

from ctr_eval.format import atomic_path, write_json
from ctr_eval._runtime import (RunOptions, global_batches, make_accelerator, predict_probs, prepare,
                               process_bounds, reuse_freed_memory)
from ctr_eval.config import config_hash, config_to_dict
from ctr_eval.global_batch import global_batch_norm, set_dropout_generator
from ctr_eval.metrics import auc as exact_auc
from ctr_eval.metrics import logloss as clipped_logloss
from ctr_eval.models import build_model, model_name_of

logger = logging.getLogger(__name__)

RUN_FILE = "run.json"
RESULT_FILE = "result.json"
LAST_CHECKPOINT = "checkpoint_last.pt"
BEST_CHECKPOINT = "model_best.pt"
ITEM_TABLE_FILE = "item_table.pt"
VALID_SCORES_FILE = "valid_scores.npy"  # the best epoch's click probabilities, valid row order


@dataclass
class TrainState:
    """What an epoch checkpoint restores besides weights and optimizer."""

    epoch: int = 0  # epochs completed
    history: list[dict[str, Any]] = field(default_factory=list)
    best_auc: float = -math.inf
    best_epoch: int = 0
    stopping_steps: int = 0
    finished: bool = False  # early stopping fired or config.epochs reached


def early_stop_step(state: TrainState, record: dict[str, Any], config: Any) -> bool:
    """Fold one epoch's record into ``state``; True when the epoch is a new best.

    As FuxiCTR's ``checkpoint_and_earlystop``: a new best needs AUC >= best + min_delta;
    otherwise the patience counter grows; training ends when it reaches
    ``early_stop_patience`` or when ``config.epochs`` epochs are done.
    """
    auc = record["valid_auc"]
    improved = auc >= state.best_auc + config.min_delta
    record["improved"] = improved
    if improved:
        state.best_auc, state.best_epoch, state.stopping_steps = auc, record["epoch"], 0
    else:
        state.stopping_steps += 1
    state.epoch = record["epoch"]
    state.history.append(record)
    if state.stopping_steps >= config.early_stop_patience or state.epoch >= config.epochs:
        state.finished = True
    return improved


def torch_save(path: str | os.PathLike, obj: Any) -> Path:
    """``torch.save`` to ``path``, atomically."""
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)
    return Path(path)


class RunDirMismatch(ValueError):
    """The run dir holds another run (model, config, item table or train rows differ)."""


class Trainer:
    """Fits one model on a train split, validates each epoch, keeps the best weights.

    The model's name, its config hash and how to build it all follow from ``config`` (a
    registered model's config: see :mod:`ctr_eval.models`). ``model_factory(config,
    item_table)``, for tests and benchmarks, replaces the registered model: an nn.Module
    with forward(batch) -> logits (B,), ``loss(logits, labels)`` and ``regularization_loss()``
    (see :class:`ctr_eval.models.CTRModel`). ``run_dir``
    receives run.json, the epoch and best checkpoints and result.json; an existing
    compatible run there is resumed.
    """

    def __init__(
        self,
        config: Any,
        item_table: Any,
        train_split: Any,
        valid_split: Any,
        run_dir: str | os.PathLike,
        options: RunOptions | None = None,
        meta: dict[str, Any] | None = None,
        model_factory: Any = None,
    ) -> None:
        self.model_name = model_name_of(config)
        self.config = config
        self.config_hash = config_hash(config)
        self.item_table = item_table
        self.model_factory = model_factory or functools.partial(build_model, self.model_name)
        self.train_split = train_split
        self.valid_split = valid_split
        self.run_dir = Path(run_dir)
        self.options = options or RunOptions()
        self.options.check()
        self.meta = dict(meta or {})
        self.fingerprint = item_table.fingerprint()

    # -- setup ----------------------------------------------------------------------------
    def _run_record(self, acc: Accelerator) -> dict[str, Any]:
        return {
            "model": self.model_name,
            "config": config_to_dict(self.config),
            "config_hash": self.config_hash,
            "item_table_fingerprint": self.fingerprint,
            "num_processes": acc.num_processes,
            "mixed_precision": self.options.mixed_precision,
            **self.meta,
        }

    def _check_run_dir(self) -> dict[str, Any] | None:
        """Refuse a run dir holding a different run; return the resumable checkpoint if any."""
        run_file = self.run_dir / RUN_FILE
        if run_file.exists():
            import json

            old = json.loads(run_file.read_text(encoding="utf-8"))
            for key, now in (("model", self.model_name), ("config_hash", self.config_hash),
                             ("item_table_fingerprint", self.fingerprint),
                             ("train_rows", self.meta.get("train_rows"))):
                if old.get(key) != now:
                    raise RunDirMismatch(
                        f"run dir {self.run_dir} holds a different run ({key} {old.get(key)!r}, "
                        f"this run has {now!r}); pass a new run_dir to start fresh"
                    )
        last = self.run_dir / LAST_CHECKPOINT
        if last.exists():
            return torch.load(last, map_location="cpu", weights_only=False)
        return None

    # -- the run --------------------------------------------------------------------------
    def fit(self) -> dict[str, Any]:
        acc = make_accelerator(self.options)
        with reuse_freed_memory():  # no page faults on each step's big temporaries
            return self._fit(acc)

    def _fit(self, acc: Accelerator) -> dict[str, Any]:
        cfg = self.config
        resume = self._check_run_dir()
        if acc.is_main_process:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            write_json(self.run_dir / RUN_FILE, self._run_record(acc))
            if not (self.run_dir / ITEM_TABLE_FILE).exists():
                torch_save(self.run_dir / ITEM_TABLE_FILE, self.item_table.to_dict())
        logger.info("model %s, config (hash %s): %s", self.model_name, self.config_hash,
                    config_to_dict(cfg))
        logger.info("%d process(es) on %s, mixed precision %s",
                    acc.num_processes, acc.device, self.options.mixed_precision)

        set_seed(cfg.seed)
        model = global_batch_norm(self.model_factory(cfg, self.item_table), acc.num_processes,
                                  acc.device.type)
        optimizer = make_optimizer(model, cfg.learning_rate)
        model, optimizer = prepare(acc, model, optimizer)
        unwrapped = acc.unwrap_model(model)
        state = TrainState()
        if resume is not None:
            unwrapped.load_state_dict(resume["model"])
            optimizer.load_state_dict(resume["optimizer"])
            state = TrainState(**resume["state"])
            logger.info("resuming %s after epoch %d (best AUC %.6f at epoch %d)",
                        self.run_dir, state.epoch, state.best_auc, state.best_epoch)

        max_epochs = cfg.epochs if self.options.max_epochs is None else min(cfg.epochs, self.options.max_epochs)
        while not state.finished and state.epoch < max_epochs:
            record = self._train_epoch(acc, model, unwrapped, optimizer, state.epoch)
            probs = self.predict_probs(acc, unwrapped, self.valid_split)
            labels = self.valid_split.label.numpy()
            record["valid_auc"] = float(exact_auc(labels, probs))
            record["valid_logloss"] = float(clipped_logloss(labels, probs))
            self._early_stop_update(acc, unwrapped, optimizer, state, record, probs)
            self._save_epoch_checkpoint(acc, unwrapped, optimizer, state)

        if not state.finished:
            stopped = "epoch_cap"
        elif state.stopping_steps >= cfg.early_stop_patience:
            stopped = "early_stop"
        else:
            stopped = "config_epochs"
        best = torch.load(self.run_dir / BEST_CHECKPOINT, map_location="cpu", weights_only=False)
        unwrapped.load_state_dict(best["model"])
        self.model = unwrapped
        self.accelerator = acc
        result = self._result(acc, state, stopped)
        if acc.is_main_process:
            write_json(self.run_dir / RESULT_FILE, result)
        acc.wait_for_everyone()
        logger.info("best valid AUC %.6f logloss %.6f at epoch %d of %d (%s)", result["valid_auc"],
                    result["valid_logloss"], result["best_epoch"], result["epochs_run"], stopped)
        return result

    def _train_epoch(self, acc: Accelerator, model: Any, unwrapped: Any, optimizer: Any, epoch: int) -> dict[str, Any]:
        cfg = self.config
        num_processes, rank = acc.num_processes, acc.process_index
        # Re-seed per (epoch, rank): per-process randomness (TransAct's transformer dropout)
        # is reproducible and resume is exact.
        rank_seed = (cfg.seed + 1_000_003 * (epoch + 1) + 7919 * rank) % (2**31)
        random.seed(rank_seed)
        np.random.seed(rank_seed)
        torch.manual_seed(rank_seed)
        # The same on every process: global-batch dropout masks (see the module docstring).
        dropout_generator = torch.Generator(device=acc.device)
        dropout_generator.manual_seed((cfg.seed + 1_000_003 * (epoch + 1)) % (2**31))
        set_dropout_generator(unwrapped, dropout_generator)
        batches = global_batches(len(self.train_split), cfg.batch_size, cfg.seed, epoch, num_processes,
                                 cfg.shuffle)
        if self.options.max_steps is not None:
            batches = batches[:self.options.max_steps]
        lr = optimizer.param_groups[0]["lr"]
        model.train()
        loss_sum = torch.zeros((), dtype=torch.float64, device=acc.device)  # no per-step sync
        bar = progress_of(batches, desc=f"epoch {epoch + 1}", unit="batch",
                          enabled=self.options.progress and acc.is_main_process)
        started = time.perf_counter()
        for batch_rows in bar:
            global_batch = self.train_split.batch(torch.from_numpy(batch_rows))
            start, stop = process_bounds(len(batch_rows), rank, num_processes)
            batch = send_to_device({k: v[start:stop] for k, v in global_batch.items()}, acc.device)
            logits = model(batch)
            local_mean = unwrapped.loss(logits, batch["label"])
            bce_sum = local_mean * (stop - start)
            # Scaled so that DDP's average over processes is the global batch mean (factor 1
            # on one process).
            loss = bce_sum * (num_processes / len(batch_rows)) + unwrapped.regularization_loss()
            acc.backward(loss)
            if cfg.max_gradient_norm:
                acc.clip_grad_norm_(model.parameters(), cfg.max_gradient_norm)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            loss_sum += bce_sum.detach().double()
        set_dropout_generator(unwrapped, None)
        seconds = time.perf_counter() - started
        total = acc.reduce(loss_sum, reduction="sum").item() if num_processes > 1 else loss_sum.item()
        n = sum(len(b) for b in batches)
        reg = float(unwrapped.regularization_loss().detach())
        record = {"epoch": epoch + 1, "lr": lr, "train_bce": total / max(n, 1), "reg_loss": reg,
                  "train_samples": n, "train_seconds": seconds, "samples_per_s": n / max(seconds, 1e-9)}
        logger.info("epoch %d: train BCE %.6f (+ reg %.3g), %.0f samples/s, lr %.3g",
                    epoch + 1, record["train_bce"], reg, record["samples_per_s"], lr)
        return record

    def _early_stop_update(self, acc: Accelerator, unwrapped: Any, optimizer: Any,
                           state: TrainState, record: dict[str, Any], probs: np.ndarray) -> None:
        """FuxiCTR's checkpoint_and_earlystop, once per epoch. The best epoch's valid
        scores are kept beside its weights, for paired comparisons of runs (DeLong)."""
        cfg = self.config
        improved = early_stop_step(state, record, cfg)
        if improved and acc.is_main_process:
            # scores first: a kill between the two writes leaves them newer, never older,
            # than the weights, and a reader checks them against the recorded AUC
            with atomic_path(self.run_dir / VALID_SCORES_FILE) as tmp:
                with open(tmp, "wb") as handle:
                    np.save(handle, np.asarray(probs, dtype=np.float32))
            torch_save(self.run_dir / BEST_CHECKPOINT, {
                "model": _cpu_state(unwrapped), "model_name": self.model_name, "epoch": record["epoch"],
                "config": config_to_dict(cfg), "config_hash": self.config_hash,
                "item_table_fingerprint": self.fingerprint, "valid_auc": record["valid_auc"],
                "valid_logloss": record["valid_logloss"]})
        if not improved and cfg.reduce_lr_on_plateau:
            for group in optimizer.param_groups:
                group["lr"] = max(group["lr"] * cfg.lr_decay_factor, cfg.min_lr)
        logger.info("epoch %d: valid AUC %.6f logloss %.6f%s", record["epoch"], record["valid_auc"],
                    record["valid_logloss"], " (best)" if improved else
                    f" (no gain {state.stopping_steps}/{cfg.early_stop_patience})")

    def _save_epoch_checkpoint(self, acc: Accelerator, unwrapped: Any, optimizer: Any, state: TrainState) -> None:
        if acc.is_main_process:
            torch_save(self.run_dir / LAST_CHECKPOINT, {
                "model": _cpu_state(unwrapped), "optimizer": optimizer.state_dict(),
                "state": dataclasses.asdict(state), "config_hash": self.config_hash,
                "item_table_fingerprint": self.fingerprint,
                # Recorded for inspection; the per-epoch re-seeding is what makes resume exact.
                "rng": {"python": random.getstate(), "numpy": np.random.get_state(),
                        "torch": torch.get_rng_state()}})
        acc.wait_for_everyone()

    # -- evaluation -----------------------------------------------------------------------
    def predict_probs(self, acc: Accelerator, unwrapped: Any, split: Any) -> np.ndarray:
        """Click probabilities for every row of ``split``, in row order, on every process."""
        return predict_probs(acc, unwrapped, split, self.options.eval_batch_size or max(self.config.batch_size, 4096),
                             progress=self.options.progress)

    def _result(self, acc: Accelerator, state: TrainState, stopped: str) -> dict[str, Any]:
        best = next((h for h in state.history if h["epoch"] == state.best_epoch), None)
        if best is None:
            raise RuntimeError(f"run dir {self.run_dir}: no completed epoch recorded")
        seconds = sum(h["train_seconds"] for h in state.history)
        samples = sum(h["train_samples"] for h in state.history)
        return {
            "model": self.model_name,
            "valid_auc": best["valid_auc"],
            "valid_logloss": best["valid_logloss"],
            "best_epoch": state.best_epoch,
            "epochs_run": state.epoch,
            "stopped": stopped,
            "max_epochs_cap": self.options.max_epochs,
            "max_steps_per_epoch": self.options.max_steps,
            "train_samples_per_s": samples / max(seconds, 1e-9),
            "history": state.history,
            "config": config_to_dict(self.config),
            "config_hash": self.config_hash,
            "item_table_fingerprint": self.fingerprint,
            "num_processes": acc.num_processes,
            "device": str(acc.device),
            "mixed_precision": self.options.mixed_precision,
            "n_train": len(self.train_split),
            "n_valid": len(self.valid_split),
            "run_dir": str(self.run_dir),
            "versions": {"torch": torch.__version__, "accelerate": _accelerate_version()},
            **self.meta,
        }


def make_optimizer(model: torch.nn.Module, learning_rate: float) -> torch.optim.Optimizer:
    """FuxiCTR's optimizer, torch's Adam with default betas and eps, in its fused form: the
    same update up to float rounding, ~10x faster per step than the default per-tensor loop
    on CPU (3 x 9088^2 TransAct cross weights: 0.28 s vs 2.8 s, bench/README.md)."""
    return torch.optim.Adam(model.parameters(), lr=learning_rate, fused=True)


def _cpu_state(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu().clone() for k, v in module.state_dict().items()}


def _accelerate_version() -> str:
    import accelerate

    return accelerate.__version__
