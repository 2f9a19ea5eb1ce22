"""A small training loop for fusion heads that learn from train histories.

Heads hand it three things:

* ``module``: an ``nn.Module`` called as ``module(blocks, rows)``, where ``blocks`` is a
  list of per-encoder feature tensors for the items ``rows`` (0-based feature rows), and
  returning one vector per row;
* a pair sampler: ``sampler(epoch)`` gives that epoch's (query, key) pairs of feature
  rows that belong together (:class:`WindowSampler` draws them from histories;
  :func:`split_histories` holds some histories out for early stopping);
* an objective ``objective(queries, keys, positives, query_rows, key_rows, key_log_q)``
  returning one loss per query: query i's positive is ``keys[positives[i]]``, every other
  key of the global batch is a negative, and ``key_log_q`` is the log of each key's
  sampling frequency (:func:`info_nce` is the one the heads here use).

It trains with Accelerate on one CPU or GPU process or several (``accelerate launch`` /
``torchrun``), and several processes give the one-process result up to float rounding:
every process builds the same global batches from (seed, epoch) and takes a contiguous
share of the pairs; the keys are gathered from all processes (gradients flow back through
the gather), each process scores its own queries against the whole global batch, and the
loss is scaled so that DDP's gradient average equals the gradient of the global-batch mean.
After each epoch the loss on the held-out pairs decides early stopping; the best epoch's
weights are kept. This is not ctr_eval's trainer: the judge stays separate.
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
from tqdm.auto import tqdm

from ctr_eval.checks import check_positive_int

logger = logging.getLogger(__name__)

Objective = Callable[..., torch.Tensor]


@dataclass(frozen=True)
class LoopOptions:
    """How to train; ``device``: None (a GPU when there is one), "cpu" or "cuda"."""

    epochs: int = 10
    batch_size: int = 1024
    learning_rate: float = 1e-3
    weight_decay: float = 0.0
    patience: int = 2
    seed: int = 0
    device: str | None = None

    def check(self, where: str) -> None:
        for name in ("epochs", "batch_size", "patience"):
            check_positive_int(f"{where}: {name}", getattr(self, name))
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


@dataclass
class LoopResult:
    """What :func:`train_pairs` did: per-epoch ``history`` (train and held-out loss),
    ``best_epoch`` (1-based; its weights are the module's now), why it ``stopped`` and on
    how many ``processes``."""

    history: list[dict[str, float]] = field(default_factory=list)
    best_epoch: int = 0
    stopped: str = "max_epochs"
    processes: int = 1


# -- histories -> pairs ------------------------------------------------------------------------
def check_sequences(sequences: Any, n_items: int, where: str) -> np.ndarray:
    """``sequences`` as an (n, L) int64 array of values in 0..n_items (0 = padding,
    k = feature row k - 1); TypeError / ValueError naming what is wrong."""
    if sequences is None:
        raise ValueError(f"{where} learns from user histories: fit(features, sequences) needs "
                         "sequences, an (n, L) int array (0 = padding, k = feature row k - 1)")
    array = np.asarray(sequences)
    if array.dtype == object or not (np.issubdtype(array.dtype, np.integer) or array.size == 0):
        raise TypeError(f"{where}: sequences must be an integer array, got dtype {array.dtype}")
    if array.ndim != 2:
        raise ValueError(f"{where}: sequences must be 2-D (histories, positions), got shape {array.shape}")
    if array.size and (array.min() < 0 or array.max() > n_items):
        bad = array[(array < 0) | (array > n_items)][0]
        raise ValueError(f"{where}: sequences hold {int(bad)}, outside 0..{n_items} (0 = padding, "
                         f"k = feature row k - 1 of the {n_items} items)")
    return array.astype(np.int64, copy=False)


def split_histories(n: int, holdout: float, seed: int) -> np.ndarray:
    """A bool mask of the ``round(holdout * n)`` histories held out (seeded), at least one
    when ``holdout > 0`` and there are two or more histories."""
    count = int(round(holdout * n))
    if holdout > 0 and n >= 2:
        count = min(max(count, 1), n - 1)
    held = np.zeros(n, dtype=bool)
    held[np.random.default_rng([seed, 0x401D]).permutation(n)[:count]] = True
    return held


def window_pairs(sequences: np.ndarray, window: int) -> np.ndarray:
    """Every (m, 2) pair of feature rows of items at most ``window`` positions apart in a
    history (each once, older item first; an item with itself left out)."""
    check_positive_int("window", window)
    out = []
    for gap in range(1, min(window, max(sequences.shape[1] - 1, 0)) + 1):
        first, second = sequences[:, :-gap].ravel(), sequences[:, gap:].ravel()
        keep = (first > 0) & (second > 0) & (first != second)
        out.append(np.stack([first[keep], second[keep]], axis=1) - 1)
    return np.concatenate(out) if out else np.zeros((0, 2), np.int64)


class WindowSampler:
    """Each epoch, every item of every history as a query, paired with one other position
    of its history at most ``window`` away, drawn uniformly (seeded by epoch).

    An epoch costs one pair per click whatever the window, and over epochs every pair
    within the window comes up; a wide window pairs items of the same user's taste, a
    narrow one items of the same moment. Draws that land on the same item (a repeated
    click) are dropped.
    """

    def __init__(self, sequences: np.ndarray, window: int, seed: int) -> None:
        self.window = check_positive_int("window", window)
        self.seed = seed
        # left zero-padded rows: a history's clicks are its last `length` positions
        rows, cols = np.nonzero(sequences)
        self.items = sequences[rows, cols] - 1
        self.first = sequences.shape[1] - (sequences > 0).sum(axis=1)[rows]
        self.rows, self.cols = rows, cols
        self.sequences = sequences
        low = np.maximum(self.first, cols - self.window)
        high = np.minimum(sequences.shape[1] - 1, cols + self.window)
        self.low, self.choices = low, high - low  # positions to pick from, the query's own left out

    def __len__(self) -> int:
        """Pairs per epoch, at most."""
        return int((self.choices > 0).sum())

    def __call__(self, epoch: int) -> np.ndarray:
        draw = np.random.default_rng([self.seed, epoch, 0x5A]).random(len(self.items))
        ok = self.choices > 0
        partner = self.low + np.floor(draw * self.choices).astype(np.int64)
        partner += partner >= self.cols  # skip the query's own position
        keys = self.sequences[self.rows[ok], partner[ok]] - 1
        pairs = np.stack([self.items[ok], keys], axis=1)
        return pairs[(pairs[:, 0] != pairs[:, 1]) & (keys >= 0)]  # keys < 0: a gap inside a history


def item_counts(sequences: np.ndarray, n_items: int) -> np.ndarray:
    """How often each feature row occurs in ``sequences`` (int64, (n_items,))."""
    values = sequences[sequences > 0] - 1
    return np.bincount(values, minlength=n_items).astype(np.int64)


def count_log_q(counts: np.ndarray) -> np.ndarray:
    """Log of each item's sampling frequency as a key, float32: its share of the clicks
    (each click is a query once per epoch, and on average a key once). Items never
    clicked get the log of half a click (never keys; the value only keeps it finite)."""
    counts = np.asarray(counts, dtype=np.float64)
    return np.log(np.maximum(counts, 0.5) / max(counts.sum(), 1.0)).astype(np.float32)


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


def _global_batches(n: int, batch_size: int, seed: int, epoch: int, processes: int) -> list[np.ndarray]:
    """The epoch's batches of pair indices, the same on every process; a tail too small to
    give each process a pair joins the batch before it."""
    order = np.random.default_rng([seed, epoch]).permutation(n)
    batches = [order[start: start + batch_size] for start in range(0, n, batch_size)]
    if len(batches) > 1 and len(batches[-1]) < processes:
        batches[-2:] = [np.concatenate(batches[-2:])]
    return batches


# -- the loop ----------------------------------------------------------------------------------
class _Step:
    """One global batch: embed this process's share, gather the keys, score, backward."""

    def __init__(self, acc: Any, blocks: list[torch.Tensor], log_q: torch.Tensor | None,
                 objective: Objective) -> None:
        self.acc, self.blocks, self.log_q, self.objective = acc, blocks, log_q, objective

    def embed(self, model: Any, rows: torch.Tensor) -> torch.Tensor:
        # Each distinct item once: popular items recur within a batch.
        unique, inverse = torch.unique(rows, return_inverse=True)
        return model([block[unique] for block in self.blocks], unique)[inverse]

    def losses(self, model: Any, batch: np.ndarray, distributed: bool) -> tuple[torch.Tensor, int]:
        """This process's per-query losses on ``batch`` ((query, key) pairs) and its size."""
        acc = self.acc
        processes, rank = (acc.num_processes, acc.process_index) if distributed else (1, 0)
        share = batch[_share(len(batch), rank, processes)]
        rows = torch.as_tensor(share, device=acc.device)
        vectors = self.embed(model, rows.reshape(-1))
        queries, keys = vectors[0::2], vectors[1::2]
        key_rows = torch.as_tensor(batch[:, 1], device=acc.device)
        offset = _share(len(batch), rank, processes).start
        if processes > 1:
            bounds = [_share(len(batch), r, processes) for r in range(processes)]
            sizes = tuple(b.stop - b.start for b in bounds)
            keys = _GatherRows.apply(keys, sizes, rank)
        positives = torch.arange(len(share), device=acc.device) + offset
        log_q = None if self.log_q is None else self.log_q[key_rows]
        return self.objective(queries, keys, positives, rows[:, 0], key_rows, log_q), len(batch)


def train_pairs(module: nn.Module, blocks: list[np.ndarray], sampler: Callable[[int], np.ndarray],
                held_pairs: np.ndarray, objective: Objective, options: LoopOptions,
                log_q: np.ndarray | None, where: str = "fusion") -> LoopResult:
    """Train ``module`` in place on the pairs ``sampler(epoch)`` gives ((m, 2) feature
    rows, query then key) with ``objective``; stop early on the loss of ``held_pairs``
    (none: train all ``options.epochs``).

    ``blocks`` are the per-encoder inputs of every item (row-aligned float32 arrays) and
    ``log_q`` the log sampling frequency of each item as a key (:func:`count_log_q`; None:
    no correction). The module ends on the CPU, in eval mode, with the weights of the best
    held-out epoch.
    """
    options.check(where)
    from accelerate import Accelerator

    acc = Accelerator(cpu=options.device == "cpu" or (options.device is None and not torch.cuda.is_available()))
    torch_blocks = [torch.as_tensor(b, device=acc.device) for b in blocks]
    step = _Step(acc, torch_blocks, None if log_q is None else torch.as_tensor(log_q, device=acc.device), objective)
    optimizer = torch.optim.AdamW(module.parameters(), lr=options.learning_rate,
                                  weight_decay=options.weight_decay)
    model, optimizer = acc.prepare(module, optimizer)
    threads_before = torch.get_num_threads()
    if acc.device.type == "cpu":
        torch.set_num_threads(_cpu_threads(module, options.batch_size, acc.num_processes))
    try:
        result = _epochs(acc, model, optimizer, step, sampler, held_pairs, options, where)
    finally:
        torch.set_num_threads(threads_before)
    module.to("cpu").eval()
    return result


def _cpu_threads(module: nn.Module, batch_size: int, processes: int) -> int:
    """Torch CPU threads while training: the cores shared among the processes, but one for
    a tiny model, whose small operations only lose time waiting on a second thread."""
    work = sum(p.numel() for p in module.parameters()) * batch_size
    return 1 if work < 2**24 else max(1, (os.cpu_count() or 1) // processes)


def _epochs(acc: Any, model: Any, optimizer: Any, step: "_Step", sampler: Callable[[int], np.ndarray],
            held_pairs: np.ndarray, options: LoopOptions, where: str) -> LoopResult:
    """Up to ``options.epochs`` epochs with early stopping; the model ends with the best
    held-out epoch's weights."""
    result, best_state, best_loss, waited = LoopResult(processes=acc.num_processes), None, math.inf, 0
    logger.info("%s: training on %s process(es) of %s, %d held-out pairs, %s", where,
                acc.num_processes, acc.device, len(held_pairs), options)
    for epoch in range(1, options.epochs + 1):
        pairs = sampler(epoch)
        if len(pairs) == 0:
            raise ValueError(f"{where}: the histories hold no pair of distinct items to learn from")
        train_loss = _train_epoch(acc, model, optimizer, step, pairs, options, epoch, where)
        unwrapped = acc.unwrap_model(model)
        held_loss = _held_out_loss(unwrapped, step, held_pairs, options) if len(held_pairs) else math.nan
        result.history.append({"epoch": epoch, "train_loss": train_loss, "held_out_loss": held_loss})
        logger.info("%s: epoch %d train loss %.4f held-out loss %.4f", where, epoch, train_loss, held_loss)
        if not len(held_pairs) or held_loss < best_loss:
            best_loss, waited, result.best_epoch = held_loss, 0, epoch
            best_state = copy.deepcopy(unwrapped.state_dict())
        else:
            waited += 1
            if waited >= options.patience:
                result.stopped = "early_stop"
                break
    acc.unwrap_model(model).load_state_dict(best_state)
    return result


def _train_epoch(acc: Any, model: Any, optimizer: Any, step: _Step, pairs: np.ndarray,
                 options: LoopOptions, epoch: int, where: str) -> float:
    """One pass over the epoch's pairs; their mean loss (every process gets it)."""
    model.train()
    batches = _global_batches(len(pairs), options.batch_size, options.seed, epoch, acc.num_processes)
    show = acc.is_main_process and logger.isEnabledFor(logging.INFO)
    total = torch.zeros((), device=acc.device, dtype=torch.float64)
    for batch in tqdm(batches, desc=f"{where} epoch {epoch}", disable=not show, leave=False):
        losses, size = step.losses(model, pairs[batch], distributed=acc.num_processes > 1)
        # DDP averages the processes' gradients: scale so the average is the gradient of
        # the global-batch mean.
        loss = losses.sum() * (acc.num_processes / size)
        optimizer.zero_grad(set_to_none=True)
        acc.backward(loss)
        optimizer.step()
        total += losses.detach().sum().double()
    return float(acc.reduce(total, reduction="sum")) / len(pairs)


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
