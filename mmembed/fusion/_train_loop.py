"""A small training loop for fusion heads that learn from train histories.

Heads hand it three things:

* ``module``: an ``nn.Module`` called as ``module(blocks, rows)``, where ``blocks`` is a
  list of per-encoder feature tensors for the items ``rows`` (0-based feature rows), and
  returning one vector per row; an ``nn.Embedding(sparse=True)`` inside it (a per-item
  table) is trained with lazy Adam on the rows each step touches;
* a pair sampler: ``sampler(pass)`` gives that pass's (query, key) pairs of feature rows
  that belong together (:class:`~mmembed.fusion._pairs.WindowSampler` draws them from
  histories; :func:`~mmembed.fusion._pairs.split_histories` holds some out);
* an objective ``objective(queries, keys, positives, query_rows, key_rows, key_log_q)``
  returning one loss per query: query i's positive is ``keys[positives[i]]``, every other
  key of the global batch is a negative, and ``key_log_q`` is the log of each key's
  sampling frequency (:func:`info_nce` is the one the heads here use).

It trains for a budget of ``max_steps`` steps, not for epochs: the pairs come pass after
pass (each a fresh draw, shuffled), so the fit's cost does not grow with the histories.
Every ``eval_every`` steps (default: one pass, at most 2,000 steps) the loss on held-out
pairs (at most 200,000 of them) decides early stopping, and the best evaluation's weights
are kept. With a ``checkpoint_dir`` the state at each evaluation is saved there, and a
fit with the same inputs resumes from it to the same result as one never stopped.

It runs with Accelerate on one CPU or GPU process or several (``accelerate launch`` /
``torchrun``), and several processes give the one-process result up to float rounding:
every process builds the same global batches from (seed, pass) and takes a contiguous
share of the pairs; the keys are gathered from all processes (gradients flow back through
the gather), each process scores its own queries against the whole global batch, and the
loss is scaled so that DDP's gradient average equals the gradient of the global-batch mean
(sparse per-item gradients are summed across processes by hand: DDP's NCCL backend cannot
reduce them). This is not ctr_eval's trainer: the judge stays separate.
"""
from __future__ import annotations

import copy
import logging
import math
import os
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import torch
from torch import nn
from ctr_eval.progress import progress

from ctr_eval import default_cpu_threads
from ctr_eval.checks import check_positive_int
from mmembed.fusion._checkpoint import Checkpoint

logger = logging.getLogger(__name__)

Objective = Callable[..., torch.Tensor]
EVAL_EVERY_MAX = 2000
MAX_HELD_OUT_PAIRS = 200_000


@dataclass(frozen=True)
class LoopOptions:
    """How to train; ``eval_every``: None = one pass over the pairs, at most
    ``EVAL_EVERY_MAX`` steps; ``device``: None (a GPU when there is one), "cpu" or "cuda";
    ``checkpoint_dir``: None, or a folder to save and resume the fit in."""

    max_steps: int = 15_000
    eval_every: int | None = None
    batch_size: int = 1024
    learning_rate: float = 1e-3
    weight_decay: float = 0.0
    patience: int = 2
    seed: int = 0
    device: str | None = None
    checkpoint_dir: str | None = None

    def check(self, where: str) -> None:
        for name in ("max_steps", "batch_size", "patience"):
            check_positive_int(f"{where}: {name}", getattr(self, name))
        check_positive_int(f"{where}: eval_every", self.eval_every, allow_none=True)
        for name in ("learning_rate", "weight_decay"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise TypeError(f"{where}: {name} must be a number, got {type(value).__name__} {value!r}")
            if not math.isfinite(value) or value < 0 or (name == "learning_rate" and value == 0):
                raise ValueError(f"{where}: {name} must be a finite number "
                                 f"{'> 0' if name == 'learning_rate' else '>= 0'}, got {value!r}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, (int, np.integer)):
            raise TypeError(f"{where}: seed must be an integer, got {type(self.seed).__name__} {self.seed!r}")
        if self.device not in (None, "cpu", "cuda"):
            raise ValueError(f"{where}: device must be None, 'cpu' or 'cuda', got {self.device!r}")
        if self.checkpoint_dir is not None and not isinstance(self.checkpoint_dir, (str, os.PathLike)):
            raise TypeError(f"{where}: checkpoint_dir must be None or a folder path, got {self.checkpoint_dir!r}")


@dataclass
class LoopResult:
    """What :func:`train_pairs` did: per-evaluation ``history`` (step, pass, train and
    held-out loss), ``best_step`` (its weights are the module's now), ``steps`` taken, why
    it ``stopped`` ("max_steps" or "early_stop") and on how many ``processes``."""

    history: list[dict[str, float]] = field(default_factory=list)
    best_step: int = 0
    steps: int = 0
    stopped: str = "max_steps"
    processes: int = 1


# -- the objective -------------------------------------------------------------------------------
def info_nce(queries: torch.Tensor, keys: torch.Tensor, positives: torch.Tensor,
             query_rows: torch.Tensor, key_rows: torch.Tensor, key_log_q: torch.Tensor | None,
             temperature: float) -> torch.Tensor:
    """Per-query InfoNCE over in-batch keys, with an optional sampling correction.

    logits[i, j] = queries[i] . keys[j] / temperature - key_log_q[j]. In-batch keys are
    drawn with their items' frequency q, so popular items are negatives more often and
    plain InfoNCE learns scores like the pointwise mutual information of query and key
    (popularity divided out). Subtracting log q from every key's logit, the positive's
    included (the logQ correction of sampled softmax: Jean et al. 2015; Yi et al. 2019),
    makes the in-batch loss estimate the full softmax, whose scores are log p(key | query),
    popularity included; a caller may pass a scaled log q for a partial correction, or
    None for none. Keys that are the query's positive item again (another pair of the same
    item) or the query's own item are masked out: they are no negatives.
    """
    logits = queries @ keys.T / temperature
    if key_log_q is not None:
        logits = logits - key_log_q[None, :]
    own = torch.arange(len(queries), device=queries.device)
    same_item = (key_rows[None, :] == key_rows[positives][:, None]) | (key_rows[None, :] == query_rows[:, None])
    same_item[own, positives] = False
    logits = logits.masked_fill(same_item, float("-inf"))
    return nn.functional.cross_entropy(logits, positives, reduction="none")


# -- several processes -------------------------------------------------------------------------
class _GatherRows(torch.autograd.Function):
    """All processes' rows, concatenated in rank order; the backward pass sums each
    process's gradient of the gathered rows and hands every process its own rows' part."""

    @staticmethod
    def forward(ctx: Any, local: torch.Tensor, sizes: tuple[int, ...], rank: int) -> torch.Tensor:
        import torch.distributed as dist

        padded = local.new_zeros((max(sizes), *local.shape[1:]))
        padded[: len(local)] = local
        parts = [torch.empty_like(padded) for _ in sizes]
        dist.all_gather(parts, padded.contiguous())
        ctx.sizes, ctx.rank = sizes, rank
        return torch.cat([part[:size] for part, size in zip(parts, sizes)])

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None, None]:
        import torch.distributed as dist

        grad = grad.contiguous().clone()
        dist.all_reduce(grad)
        start = sum(ctx.sizes[: ctx.rank])
        return grad[start: start + ctx.sizes[ctx.rank]], None, None


def _share(m: int, rank: int, processes: int) -> slice:
    return slice(rank * m // processes, (rank + 1) * m // processes)


def _global_batches(n: int, batch_size: int, seed: int, pass_: int, processes: int) -> list[np.ndarray]:
    """The pass's batches of pair indices, the same on every process; a tail too small to
    give each process a pair joins the batch before it."""
    order = np.random.default_rng([seed, pass_]).permutation(n)
    batches = [order[start: start + batch_size] for start in range(0, n, batch_size)]
    if len(batches) > 1 and len(batches[-1]) < processes:
        batches[-2:] = [np.concatenate(batches[-2:])]
    return batches


class _Step:
    """One global batch: embed this process's share, gather the keys, score, backward."""

    def __init__(self, acc: Any, blocks: list[torch.Tensor], log_q: torch.Tensor | None,
                 objective: Objective, tables: list[nn.Parameter]) -> None:
        self.acc, self.blocks, self.log_q, self.objective = acc, blocks, log_q, objective
        self.tables = tables

    def embed(self, model: Any, rows: torch.Tensor) -> torch.Tensor:
        # Each distinct item once: popular items recur within a batch. index_select, not
        # out[inverse]: the latter's gradient (index_put_ with accumulate) sums a repeated
        # item's rows in a varying order on several CPU threads, so two fits of a seed drift
        # apart (0.13 in a table entry after 15,000 steps); index_add_ sums in row order.
        unique, inverse = torch.unique(rows, return_inverse=True)
        return model([block[unique] for block in self.blocks], unique).index_select(0, inverse)

    def losses(self, model: Any, batch: np.ndarray, distributed: bool) -> tuple[torch.Tensor, int]:
        """This process's per-query losses on ``batch`` ((query, key) pairs) and its size."""
        acc = self.acc
        processes, rank = (acc.num_processes, acc.process_index) if distributed else (1, 0)
        share = batch[_share(len(batch), rank, processes)]
        rows = torch.as_tensor(share.astype(np.int64, copy=False), device=acc.device)
        vectors = self.embed(model, rows.reshape(-1))
        queries, keys = vectors[0::2], vectors[1::2]
        key_rows = torch.as_tensor(batch[:, 1].astype(np.int64), device=acc.device)
        offset = _share(len(batch), rank, processes).start
        if processes > 1:
            bounds = [_share(len(batch), r, processes) for r in range(processes)]
            sizes = tuple(b.stop - b.start for b in bounds)
            keys = _GatherRows.apply(keys, sizes, rank)
        positives = torch.arange(len(share), device=acc.device) + offset
        log_q = None if self.log_q is None else self.log_q[key_rows]
        return self.objective(queries, keys, positives, rows[:, 0], key_rows, log_q), len(batch)

    def reduce_sparse_grads(self, processes: int) -> None:
        """Each per-item table's sparse gradient summed over the processes and averaged
        as DDP averages the dense ones (DDP was told to leave the tables alone)."""
        import torch.distributed as dist

        for table in self.tables:
            grad = table.grad.coalesce()
            rows, values = grad.indices()[0], grad.values()
            sizes = [torch.zeros((), dtype=torch.int64, device=rows.device) for _ in range(processes)]
            dist.all_gather(sizes, torch.tensor(len(rows), device=rows.device))
            sizes = [int(s) for s in sizes]
            rows, values = _gather_padded(rows, sizes), _gather_padded(values, sizes)
            table.grad = torch.sparse_coo_tensor(rows[None], values / processes, grad.shape).coalesce()


def _gather_padded(local: torch.Tensor, sizes: list[int]) -> torch.Tensor:
    """Every process's ``local`` (first dimension ``sizes[rank]``), concatenated in rank order."""
    import torch.distributed as dist

    padded = local.new_zeros((max(sizes), *local.shape[1:]))
    padded[: len(local)] = local
    parts = [torch.empty_like(padded) for _ in sizes]
    dist.all_gather(parts, padded.contiguous())
    return torch.cat([part[:size] for part, size in zip(parts, sizes)])


# -- the loop ----------------------------------------------------------------------------------
def train_pairs(module: nn.Module, blocks: list[np.ndarray], sampler: Callable[[int], np.ndarray],
                held_pairs: np.ndarray, objective: Objective, options: LoopOptions,
                log_q: np.ndarray | None, where: str = "fusion", inputs_key: str = "") -> LoopResult:
    """Train ``module`` in place for up to ``options.max_steps`` steps on the pairs
    ``sampler(pass)`` gives ((m, 2) feature rows, query then key) with ``objective``; stop
    early on the loss of ``held_pairs`` (none: train the whole budget).

    ``blocks`` are the per-encoder inputs of every item (row-aligned float32 arrays) and
    ``log_q`` the log sampling frequency of each item as a key (:func:`count_log_q`; None:
    no correction). ``inputs_key`` names the inputs (a checkpoint of other inputs is not
    resumed). The module ends on the CPU, in eval mode, with the weights of the best
    held-out evaluation.
    """
    options.check(where)
    from accelerate import Accelerator

    acc = Accelerator(cpu=options.device == "cpu" or (options.device is None and not torch.cuda.is_available()))
    held_pairs = _cap_held_out(held_pairs, options.seed)
    tables = [(name, m.weight) for name, m in module.named_modules() if isinstance(m, nn.Embedding) and m.sparse]
    if acc.num_processes > 1 and tables:
        from torch.nn.parallel import DistributedDataParallel

        DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(
            module, [f"{name}.weight" for name, _ in tables])
    table_ids = {id(p) for _, p in tables}
    dense = [p for p in module.parameters() if id(p) not in table_ids and p.requires_grad]
    optimizers = [torch.optim.AdamW(dense, lr=options.learning_rate, weight_decay=options.weight_decay)] if dense else []
    if tables:
        optimizers.append(torch.optim.SparseAdam([p for _, p in tables], lr=options.learning_rate))
    if dense:
        model, *optimizers = acc.prepare(module, *optimizers)
    else:  # per-item tables only: nothing for DDP to sync (their gradients are summed by hand)
        model = module.to(acc.device)
        optimizers = [acc.prepare(optimizer) for optimizer in optimizers]
    torch_blocks = [torch.as_tensor(b, device=acc.device) for b in blocks]
    step = _Step(acc, torch_blocks, None if log_q is None else torch.as_tensor(log_q, device=acc.device),
                 objective, [p for _, p in tables])
    checkpoint = Checkpoint(options, module, inputs_key) if options.checkpoint_dir else None
    threads_before = torch.get_num_threads()
    if acc.device.type == "cpu":
        torch.set_num_threads(_cpu_threads(module, options.batch_size, acc.num_processes))
    try:
        result = _Run(acc, model, optimizers, step, options, where, checkpoint).train(sampler, held_pairs)
    finally:
        torch.set_num_threads(threads_before)
    module.to("cpu").eval()
    return result


def _cap_held_out(held_pairs: np.ndarray, seed: int) -> np.ndarray:
    """At most ``MAX_HELD_OUT_PAIRS`` held-out pairs (a seeded sample, in order): enough
    to rank evaluations, and an evaluation then costs seconds at any data size."""
    if len(held_pairs) <= MAX_HELD_OUT_PAIRS:
        return held_pairs
    keep = np.random.default_rng([seed, 0x4E1D]).choice(len(held_pairs), MAX_HELD_OUT_PAIRS, replace=False)
    return held_pairs[np.sort(keep)]


def _cpu_threads(module: nn.Module, batch_size: int, processes: int) -> int:
    """Torch CPU threads while training: the cores shared among the processes (or
    ``OMP_NUM_THREADS``: :func:`ctr_eval.default_cpu_threads`), but one for a
    tiny model, whose small operations only lose time waiting on a second thread."""
    work = sum(p.numel() for p in module.parameters()) * batch_size
    return 1 if work < 2**24 else default_cpu_threads(processes)


class _Run:
    """The budget of steps, pass after pass, with evaluations, early stopping and
    checkpoints; ``state`` is everything a resumed fit needs besides the weights."""

    def __init__(self, acc: Any, model: Any, optimizers: list[Any], step: _Step, options: LoopOptions,
                 where: str, checkpoint: Checkpoint | None) -> None:
        self.acc, self.model, self.optimizers, self.step = acc, model, optimizers, step
        self.options, self.where, self.checkpoint = options, where, checkpoint
        self.result = LoopResult(processes=acc.num_processes)
        # all but the weights a resumed fit needs; saved at evaluations, when the running
        # training loss is zero
        self.state = {"step": 0, "pass": 1, "offset": 0, "loss_count": 0, "best_loss": math.inf,
                      "waited": 0, "done": False}
        self.running_loss = torch.zeros((), dtype=torch.float64, device=acc.device)
        self.best_weights: dict[str, torch.Tensor] | None = None

    def train(self, sampler: Callable[[int], np.ndarray], held_pairs: np.ndarray) -> LoopResult:
        options, state = self.options, self.state
        if self.checkpoint is not None:
            self.checkpoint.restore(self)
        logger.info("%s: training on %s process(es) of %s, %d held-out pairs, %s", self.where,
                    self.acc.num_processes, self.acc.device, len(held_pairs), options)
        show = self.acc.is_main_process and logger.isEnabledFor(logging.INFO)
        batches: list[np.ndarray] | None = None
        with progress(total=options.max_steps, initial=state["step"], desc=f"{self.where} steps",
                      unit="step", enabled=show) as bar:
            while not state["done"] and state["step"] < options.max_steps:
                if batches is None:
                    pairs = sampler(state["pass"])
                    if len(pairs) == 0:
                        raise ValueError(f"{self.where}: the histories hold no pair of distinct items to learn from")
                    batches = _global_batches(len(pairs), options.batch_size, options.seed, state["pass"],
                                              self.acc.num_processes)
                if state["offset"] == len(batches):  # resumed from a checkpoint saved at a pass's end
                    state["pass"], state["offset"], batches = state["pass"] + 1, 0, None
                    continue
                self._train_step(pairs[batches[state["offset"]]])
                state["offset"] += 1
                bar.update(1)
                pass_over = state["offset"] == len(batches)
                if self._evaluation_due(pass_over):
                    self._evaluate(held_pairs)
                if pass_over:
                    state["pass"], state["offset"], batches = state["pass"] + 1, 0, None
        if not state["done"]:
            if state["loss_count"]:  # the budget ended between evaluations
                self._evaluate(held_pairs)
            state["done"] = True
            if self.checkpoint is not None:
                self.checkpoint.save(self)
        self.acc.unwrap_model(self.model).load_state_dict(self.best_weights)
        return self.result

    def _evaluation_due(self, pass_over: bool) -> bool:
        state, every = self.state, self.options.eval_every
        if every is not None:
            return state["step"] % every == 0
        return pass_over or state["offset"] % EVAL_EVERY_MAX == 0

    def _train_step(self, batch: np.ndarray) -> None:
        acc, processes = self.acc, self.acc.num_processes
        self.model.train()
        losses, size = self.step.losses(self.model, batch, distributed=processes > 1)
        # DDP averages the processes' gradients: scale so the average is the gradient of
        # the global-batch mean.
        loss = losses.sum() * (processes / size)
        for optimizer in self.optimizers:
            optimizer.zero_grad(set_to_none=True)
        acc.backward(loss)
        if processes > 1:
            self.step.reduce_sparse_grads(processes)
        for optimizer in self.optimizers:
            optimizer.step()
        self.running_loss += losses.detach().sum().double()  # this process's queries
        self.state["loss_count"] += len(batch)
        self.state["step"] += 1

    def _evaluate(self, held_pairs: np.ndarray) -> None:
        state, unwrapped = self.state, self.acc.unwrap_model(self.model)
        train_loss = float(self.acc.reduce(self.running_loss, reduction="sum")) / max(state["loss_count"], 1)
        held_loss = _held_out_loss(unwrapped, self.step, held_pairs, self.options) if len(held_pairs) else math.nan
        record = {"step": state["step"], "pass": state["pass"],
                  "train_loss": train_loss, "held_out_loss": held_loss}
        self.result.history.append(record)
        self.running_loss.zero_()
        state["loss_count"] = 0
        logger.info("%s: step %d (pass %d) train loss %.4f held-out loss %.4f", self.where, state["step"],
                    state["pass"], record["train_loss"], held_loss)
        if not len(held_pairs) or held_loss < state["best_loss"]:
            state["best_loss"], state["waited"], self.result.best_step = held_loss, 0, state["step"]
            self.best_weights = copy.deepcopy(unwrapped.state_dict())
        else:
            state["waited"] += 1
            if state["waited"] >= self.options.patience:
                self.result.stopped, state["done"] = "early_stop", True
        self.result.steps = state["step"]
        if self.checkpoint is not None:
            self.checkpoint.save(self)


@torch.no_grad()
def _held_out_loss(module: nn.Module, step: _Step, held_pairs: np.ndarray, options: LoopOptions) -> float:
    """Mean objective over the held-out pairs, in fixed batches, computed whole on every
    process (so every process takes the same early-stopping decision)."""
    module.eval()
    total = 0.0
    for start in range(0, len(held_pairs), options.batch_size):
        losses, _ = step.losses(module, held_pairs[start: start + options.batch_size], distributed=False)
        total += float(losses.double().sum())
    return total / len(held_pairs)
