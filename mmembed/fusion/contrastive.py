"""``contrastive``: a content network trained so that items close in a history meet.

What it learns, in order:

1. each encoder's block is L2-normalised row by row, centred on the mean of its valid
   rows and scaled to unit mean squared norm (rows an encoder marked invalid become the
   block's centre, a zero input), and the blocks are concatenated;
2. an MLP with one hidden layer (GELU) maps them to ``dim`` dims; with ``residual=True``
   (the default) each item that occurs in the training histories adds a free vector of
   its own, scaled by ``count / (count + residual_shrink)`` so that rarely seen items keep
   close to what their content says (an item seen once moves its vector at most
   ``1 / (1 + residual_shrink)`` as far as a frequent one; unseen items get none); the sum
   is L2-normalised. With ``residual_dropout`` p > 0 each item's residual is left out of
   a training step with probability p (DropoutNet's idea: the content network must then
   place the item alone, so content carries what it can and the residual the rest);
   the finished table always includes it. With ``residual_stage="after"`` the two do
   not compete at all: the network is fitted first on content alone, then every item's
   content vector is held fixed and only the residual is fitted, on what content left
   of the co-clicks (each stage with the step budget; the default ``"joint"`` fits both
   together);
3. each pass, every click of every training history is a query paired with one other
   click at most ``window`` positions away (:class:`~mmembed.fusion._pairs.WindowSampler`);
   the histories of a seeded ``holdout`` share give the early-stopping loss. The
   objective is InfoNCE over the global batch's keys (cosine / ``temperature``), with
   the keys of the query's own item or of its positive's item masked out. Training
   takes at most ``max_steps`` steps of ``batch_size`` pairs, however long the histories
   (:mod:`~mmembed.fusion._train_loop`); the network's weights use AdamW, the residual
   lazy Adam on the rows a step touches (so ``weight_decay`` applies to the network only:
   the residual is held back by its shrinkage). With ``checkpoint_dir`` a killed fit
   resumes where it stopped.

Defaults, measured with the history proxy AUC on synthetic ``small`` (bench/history_proxy.py;
cosine of a validation row's mean history vector and its target): the temperature is
fixed at 1.0 (0.1 gave 0.56-0.63, 0.5 and 2.0 less than 1.0: co-click affinities are mild,
and a cold softmax chases the few sharp pairs; measured for this head before it had a
residual: ``gated`` with its residual reads 0.724 at 0.5 against 0.716 at 1.0,
docs/fusion.md); ``logq_correction`` (0..1, the weight of
the sampled-softmax log-q term, see :func:`~mmembed.fusion._train_loop.info_nce`) is off:
the full correction recovers popularity-laden scores and cost 0.03-0.08 of proxy AUC
against plain in-batch negatives, which already divide popularity out; the residual is on
(proxy 0.712 against 0.684 for content alone; under the fixed DIN, 4 epochs at batch
2048, validation AUC 0.690 against 0.665, where a random table gives 0.586 and the
oracle latent vectors 0.755).

Because the network maps content to vectors, items absent from every history still get
a vector. ``transform`` returns the unit vectors times sqrt(dim) (unit mean square per
coordinate, the scale of a standard-normal table, which the DIN's projection expects).
The residual is tied to feature rows: with it, ``transform`` needs the fit's items in
the fit's order (another number of rows raises ValueError); without it any items can be
transformed. Training runs through :mod:`mmembed.fusion._train_loop` (Accelerate; one or
several processes give the same head up to float rounding).
"""
from __future__ import annotations

import dataclasses
import functools
import logging
import math
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np
import torch
from torch import nn

from ctr_eval.checks import check_positive_int
from mmembed.fusion import register_fusion
from mmembed.fusion._pairs import (WindowSampler, check_sequences, count_log_q, item_counts,
                                   split_histories)
from mmembed.fusion._checkpoint import data_key
from mmembed.fusion._train_loop import LoopOptions, LoopResult, info_nce, train_pairs
from mmembed.fusion.base import FeatureBlock, FusionHead, as_blocks

logger = logging.getLogger(__name__)

_CHUNK_ROWS = 8192
RESIDUAL_STAGES = ("joint", "after")


class ShrunkResidual(nn.Module):
    """A free vector per item, scaled by the item's ``shrink`` factor (count / (count + k)):
    what behaviour says about an item beyond its content, small for rarely seen items."""

    def __init__(self, shrink: np.ndarray, dim: int) -> None:
        super().__init__()
        # sparse: a step's gradient and Adam update touch only the rows it used (the dense
        # form ran 8.6 steps/s against 33 at 91,717 items: bench/head_step.py)
        self.embedding = nn.Embedding(len(shrink), dim, sparse=True)
        nn.init.zeros_(self.embedding.weight)
        self.register_buffer("shrink", torch.as_tensor(shrink, dtype=torch.float32))

    def enable_dropout(self, rate: float, seed: int) -> None:
        """Drop each item's residual from a training step with probability ``rate``
        (DropoutNet-style: content must then stand alone). Which rows drop is a hash of
        (row, training call, seed), so one and several processes, and a resumed fit, drop
        the same rows; the call counter is a buffer and travels with the state dict."""
        self.dropout_rate, self.dropout_seed = float(rate), int(seed)
        self.register_buffer("training_calls", torch.zeros((), dtype=torch.int64))

    def forward(self, rows: torch.Tensor) -> torch.Tensor:
        scale = self.shrink[rows]
        if self.training and getattr(self, "dropout_rate", 0.0) > 0:
            kept = _hashed_uniform(rows, self.training_calls, self.dropout_seed) >= self.dropout_rate
            scale = scale * kept
            self.training_calls += 1
        return scale[:, None] * self.embedding(rows)

    def vectors(self) -> np.ndarray:
        """Each item's residual as added to the network's output: (items, dim)."""
        with torch.no_grad():
            return (self.shrink[:, None] * self.embedding.weight).cpu().numpy()


def _hashed_uniform(rows: torch.Tensor, call: torch.Tensor, seed: int) -> torch.Tensor:
    """A uniform number in [0, 1) per row, fixed by (row, call, seed): an integer hash
    (multiply-xorshift; int64 products wrap), its low 24 bits scaled."""
    x = rows.to(torch.int64) * 0x9E3779B1 + call * 0x85EBCA77 + seed * 0xC2B2AE3D
    for shift, factor in ((16, 0x7FEB352D), (15, 0x846CA68B)):
        x = (x ^ (x >> shift)) * factor
    x = x ^ (x >> 16)
    return (x & 0xFFFFFF).to(torch.float32) / float(1 << 24)


class ResidualNet(nn.Module):
    """What the trained heads' networks share: ``content(blocks)`` (each subclass defines
    it), a vector per item from its features, plus the item's shrunk residual when there
    is one, L2-normalised."""

    residual: ShrunkResidual | None
    content: Callable[[list[torch.Tensor]], torch.Tensor]

    def forward(self, blocks: list[torch.Tensor], rows: torch.Tensor) -> torch.Tensor:
        out = self.content(blocks)
        if self.residual is not None:
            out = out + self.residual(rows)
        return nn.functional.normalize(out, dim=1)


class ContrastiveNet(ResidualNet):
    """Concatenated blocks -> Linear -> GELU -> Linear (+ shrunk per-item residual) -> unit vectors."""

    def __init__(self, in_dims: list[int], hidden: int, dim: int, shrink: np.ndarray | None) -> None:
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(sum(in_dims), hidden), nn.GELU(), nn.Linear(hidden, dim))
        self.residual = None if shrink is None else ShrunkResidual(shrink, dim)

    def content(self, blocks: list[torch.Tensor]) -> torch.Tensor:
        return self.mlp(torch.cat(blocks, dim=1))


class FrozenContent(nn.Module):
    """The second stage of ``residual_stage="after"``: every item's content vector fixed
    (computed once by the trained network), only the residual learns."""

    def __init__(self, content: torch.Tensor, residual: ShrunkResidual) -> None:
        super().__init__()
        self.register_buffer("content", content, persistent=False)  # derived: not checkpointed
        self.residual = residual

    def forward(self, blocks: list[torch.Tensor], rows: torch.Tensor) -> torch.Tensor:
        return nn.functional.normalize(self.content[rows] + self.residual(rows), dim=1)


@register_fusion("contrastive")
class ContrastiveFusion(FusionHead):
    """Content MLP (+ optional per-item residual) trained with in-batch InfoNCE on
    co-occurrence in train histories."""

    uses_sequences = True
    # on the CPU: a GPU's scatter-add (the residual's gradient) is not bitwise repeatable
    tiny_params = {"dim": 4, "hidden": 8, "max_steps": 40, "batch_size": 64, "device": "cpu"}
    #: the network ``(in_dims, hidden, dim, shrink)``; subclasses (``gated``) swap it
    net_class: type = ContrastiveNet

    def __init__(self, dim: int = 128, hidden: int = 128, window: int = 32, temperature: float = 1.0,
                 logq_correction: float = 0.0, residual: bool = True, residual_shrink: float = 5.0,
                 residual_dropout: float = 0.0, residual_stage: str = "joint",
                 max_steps: int = 15_000, eval_every: int | None = None, batch_size: int = 1024,
                 learning_rate: float = 1e-2, weight_decay: float = 0.0, patience: int = 2,
                 holdout: float = 0.1, seed: int = 0, device: str | None = None,
                 checkpoint_dir: str | None = None) -> None:
        self._store_params(locals())

    # -- checks --------------------------------------------------------------------------
    def _loop_options(self) -> LoopOptions:
        options = LoopOptions(max_steps=self.max_steps, eval_every=self.eval_every,
                              batch_size=self.batch_size, learning_rate=self.learning_rate,
                              weight_decay=self.weight_decay, patience=self.patience, seed=self.seed,
                              device=self.device, checkpoint_dir=self.checkpoint_dir)
        options.check("contrastive")
        return options

    def _check_params(self) -> None:
        for name in ("dim", "hidden", "window"):
            check_positive_int(f"contrastive: {name}", getattr(self, name))
        if not isinstance(self.residual, bool):
            raise TypeError(f"contrastive: residual must be True or False, got {self.residual!r}")
        _check_real("temperature", self.temperature, above=0.0)
        _check_real("logq_correction", self.logq_correction, at_least=0.0, at_most=1.0)
        _check_real("residual_shrink", self.residual_shrink, at_least=0.0)
        _check_real("residual_dropout", self.residual_dropout, at_least=0.0, below=1.0)
        if self.residual_dropout and not self.residual:
            raise ValueError("contrastive: residual_dropout needs residual=True (there is no residual to drop)")
        if self.residual_stage not in RESIDUAL_STAGES:
            raise ValueError(f"contrastive: residual_stage must be one of {', '.join(map(repr, RESIDUAL_STAGES))}, "
                             f"got {self.residual_stage!r}")
        if self.residual_stage == "after" and not self.residual:
            raise ValueError("contrastive: residual_stage='after' needs residual=True (there is no residual to fit)")
        if self.residual_stage == "after" and self.residual_dropout:
            raise ValueError("contrastive: residual_stage='after' already fits the content network without the "
                             "residual; set residual_dropout to 0")
        _check_real("holdout", self.holdout, at_least=0.0, below=1.0)

    # -- inputs --------------------------------------------------------------------------
    def _fit_inputs(self, blocks: list[FeatureBlock]) -> None:
        """Per-block centre and scale of the normalised valid rows."""
        self.block_names_ = [b.name for b in blocks]
        self.block_dims_ = [int(b.vectors.shape[1]) for b in blocks]
        self.block_mean_, self.block_scale_ = [], []
        for b in blocks:
            if not b.valid.any():
                raise ValueError(f"contrastive: encoder {b.name!r} has no valid item; drop it or fix its input")
            x = _unit_rows(b.vectors[b.valid])
            mean = x.mean(axis=0)
            spread = float(np.mean(np.sum((x - mean) ** 2, axis=1)))
            self.block_mean_.append(mean.astype(np.float32))
            self.block_scale_.append(np.float32(1.0 / math.sqrt(spread) if spread > 0 else 1.0))

    def _inputs(self, blocks: list[FeatureBlock]) -> list[np.ndarray]:
        out = []
        for b, mean, scale in zip(blocks, self.block_mean_, self.block_scale_):
            x = (_unit_rows(b.vectors) - mean) * scale
            x[~b.valid] = 0.0
            out.append(x.astype(np.float32))
        return out

    # -- fit -----------------------------------------------------------------------------
    def fit(self, features: Mapping[str, Any], sequences: Any = None) -> "ContrastiveFusion":
        self._check_params()
        options = self._loop_options()
        blocks = as_blocks(features)
        n_items = len(blocks[0].vectors)
        sequences = check_sequences(sequences, n_items, "contrastive")
        self._fit_inputs(blocks)
        held = split_histories(len(sequences), self.holdout, self.seed)
        train_seqs = sequences[~held]
        sampler = WindowSampler(train_seqs, self.window, self.seed)
        if len(sampler) == 0:
            raise ValueError("contrastive: the histories hold no pair of distinct items to learn from")
        held_pairs = WindowSampler(sequences[held], self.window, self.seed)(0)
        logger.info("%s: %d training histories (%d pairs a pass), %d held out (%d pairs)", self.name,
                    len(train_seqs), len(sampler), int(held.sum()), len(held_pairs))
        self.item_counts_ = item_counts(train_seqs, n_items)
        net = self._new_net([b.vectors.shape[1] for b in blocks], n_items)
        objective = functools.partial(info_nce, temperature=float(self.temperature))
        log_q = count_log_q(self.item_counts_) * self.logq_correction if self.logq_correction else None
        inputs = self._inputs(blocks)
        key = data_key(sequences, *inputs, np.asarray([self.window, self.temperature, self.logq_correction,
                                                       self.residual_shrink, self.holdout, self.hidden,
                                                       self.dim, float(self.residual)]
                                                      # only when set: older checkpoints keep their key
                                                      + ([self.residual_dropout] if self.residual_dropout else [])
                                                      + ([1.0] if self.residual_stage == "after" else [])))
        if self.residual_stage == "after":
            result = self._fit_residual_after_content(net, inputs, (sampler, held_pairs, objective), options,
                                                      log_q, key)
        else:
            result = train_pairs(net, inputs, sampler, held_pairs, objective, options, log_q,
                                 where=self.name, inputs_key=key)
        self.net_ = net
        self.n_items_ = n_items
        self.n_pairs_ = len(sampler)
        self.n_held_out_pairs_ = int(len(held_pairs))
        self.history_ = result.history
        self.best_step_ = result.best_step
        self.steps_ = result.steps
        self.stopped_ = result.stopped
        self.processes_ = result.processes
        self.n_fit_items_ = int((self.item_counts_ > 0).sum())
        logger.info("%s: best at step %d of %d (%s); %d of %d items in the training histories",
                    self.name, result.best_step, result.steps, result.stopped, self.n_fit_items_, n_items)
        return self

    def _fit_residual_after_content(self, net: ResidualNet, inputs: list[np.ndarray], task: tuple,
                                    options: LoopOptions, log_q: np.ndarray | None, key: str) -> LoopResult:
        """``residual_stage="after"``: the network learns from content alone first; then every
        item's content vector is fixed and the residual learns what those leave of the
        co-clicks, so that neither takes them from the other. Each stage has the step budget
        and its own checkpoint folder."""
        def stage(name: str) -> LoopOptions:
            folder = self.checkpoint_dir and str(Path(self.checkpoint_dir) / name)
            return dataclasses.replace(options, checkpoint_dir=folder)

        residual, net.residual = net.residual, None
        first = train_pairs(net, inputs, *task, stage("content"), log_q, where=f"{self.name} content",
                            inputs_key=key)
        net.residual = residual
        with torch.no_grad():
            content = torch.cat([net.content([torch.as_tensor(x[start: start + _CHUNK_ROWS]) for x in inputs])
                                 for start in range(0, len(inputs[0]), _CHUNK_ROWS)])
        second = train_pairs(FrozenContent(content, residual), [], *task, stage("residual"), log_q,
                             where=f"{self.name} residual", inputs_key=key)
        history = [{**record, "stage": 1} for record in first.history] + [
            {**record, "step": record["step"] + first.steps, "stage": 2} for record in second.history]
        return LoopResult(history=history, best_step=first.steps + second.best_step,
                          steps=first.steps + second.steps,
                          stopped=f"content {first.stopped}, residual {second.stopped}",
                          processes=second.processes)

    def _shrink(self, counts: np.ndarray) -> np.ndarray:
        return (counts / (counts + self.residual_shrink)).astype(np.float32) if self.residual_shrink else (
            (counts > 0).astype(np.float32))

    def _new_net(self, in_dims: list[int], n_items: int, counts: np.ndarray | None = None) -> ContrastiveNet:
        counts = self.item_counts_ if counts is None else counts
        shrink = self._shrink(counts) if self.residual else None
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed)
            net = self.net_class(in_dims, self.hidden, self.dim, shrink)
        if shrink is not None and self.residual_dropout:
            net.residual.enable_dropout(self.residual_dropout, self.seed)
        return net

    # -- transform -----------------------------------------------------------------------
    def transform(self, features: Mapping[str, Any]) -> np.ndarray:
        self._check_fitted()
        blocks = self._fitted_order(as_blocks(features))
        n_items = len(blocks[0].vectors)
        if self.residual and n_items != self.n_items_:
            raise ValueError(
                f"contrastive: fitted with residual=True on {self.n_items_} items, got {n_items}: "
                "the per-item residual belongs to the fit's rows; transform the same items in "
                "the same order, or fit with residual=False to embed other items")
        inputs = self._inputs(blocks)
        out = np.empty((n_items, self.dim), dtype=np.float32)
        with torch.no_grad():
            for start in range(0, n_items, _CHUNK_ROWS):
                rows = torch.arange(start, min(start + _CHUNK_ROWS, n_items))
                chunk = [torch.as_tensor(x[start: start + _CHUNK_ROWS]) for x in inputs]
                out[start: start + len(rows)] = self.net_(chunk, rows).numpy()
        return out * np.float32(math.sqrt(self.dim))

    def _fitted_order(self, blocks: list[FeatureBlock]) -> list[FeatureBlock]:
        """``blocks`` in the fit's encoder order; other encoders or widths are refused."""
        by_name = {b.name: b for b in blocks}
        if sorted(by_name) != sorted(self.block_names_):
            raise ValueError(f"contrastive: transform got features of encoders {sorted(by_name)}, "
                             f"but the head was fitted on {self.block_names_}")
        for name, width in zip(self.block_names_, self.block_dims_):
            if by_name[name].vectors.shape[1] != width:
                raise ValueError(f"contrastive: features[{name!r}] has {by_name[name].vectors.shape[1]} "
                                 f"dims, but the head was fitted with {width}")
        return [by_name[name] for name in self.block_names_]

    def residual_vectors(self) -> np.ndarray:
        """Each item's residual as added before normalisation ((items, dim); zero rows for
        items absent from the training histories)."""
        self._check_fitted()
        if not self.residual:
            raise ValueError("contrastive: this head was fitted with residual=False")
        return self.net_.residual.vectors()

    # -- persistence ---------------------------------------------------------------------
    def _new_network(self, name: str) -> Any:
        return self._new_net(self.block_dims_, self.n_items_, self.item_counts_)

    def _load_state_v1(self, state: dict[str, Any], arrays: Mapping[str, np.ndarray]) -> None:
        """A folder saved before 5 Dec 2026 (per-head layout)."""
        self.block_names_ = list(state["block_names"])
        self.block_dims_ = [int(d) for d in state["block_dims"]]
        self.n_items_ = int(state["n_items"])
        self.n_pairs_ = int(state["n_pairs"])
        self.n_held_out_pairs_ = int(state["n_held_out_pairs"])
        self.history_ = list(state["history"])
        # heads saved before step budgets counted epochs
        self.best_step_ = int(state.get("best_step", state.get("best_epoch", 0)))
        self.steps_ = int(state.get("steps", len(self.history_)))
        self.stopped_ = str(state["stopped"])
        self.processes_ = int(state["processes"])
        self.n_fit_items_ = int(state["n_fit_items"])
        self.item_counts_ = arrays["item_counts"]
        count = len(self.block_names_)
        self.block_mean_ = [arrays[f"block_mean_{i}"] for i in range(count)]
        self.block_scale_ = [np.float32(arrays[f"block_scale_{i}"]) for i in range(count)]
        net = self._new_net(self.block_dims_, self.n_items_, self.item_counts_)
        net.load_state_dict({key[4:]: torch.as_tensor(value) for key, value in arrays.items()
                             if key.startswith("net.")})
        self.net_ = net.eval()


def _check_real(name: str, value: Any, above: float | None = None, at_least: float | None = None,
                below: float | None = None, at_most: float | None = None) -> None:
    """TypeError unless ``value`` is a real number; ValueError unless it is finite and in range."""
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise TypeError(f"contrastive: {name} must be a number, got {type(value).__name__} {value!r}")
    ok = math.isfinite(value) and (above is None or value > above) and (
        at_least is None or value >= at_least) and (below is None or value < below) and (
        at_most is None or value <= at_most)
    if not ok:
        bounds = ((">", above), (">=", at_least), ("<", below), ("<=", at_most))
        span = " and ".join(f"{op} {bound}" for op, bound in bounds if bound is not None)
        raise ValueError(f"contrastive: {name} must be a finite number {span}, got {value!r}")


def _unit_rows(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
