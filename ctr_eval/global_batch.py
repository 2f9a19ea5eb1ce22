"""Several processes training the one-process model: global-batch dropout and batch norm.

The trainer splits each global batch into contiguous per-process slices (process r holds
the r-th slice). Two kinds of layer would otherwise see only their process's rows:

- dropout draws its mask for the whole global batch from a generator seeded the same on
  every process, then keeps this process's rows (:class:`GlobalBatchDropout`);
- batch norm normalises with the global batch's statistics (:func:`global_batch_norm`).

A dropout layer finds its rows itself: it counts the rows of its own input on each
process (one small all-gather), so the global tensor is every process's rows in rank
order, which is the one-process row order because the batch is split contiguously. No
model declares row counts by hand. On one process all of this is plain dropout and batch
norm.
"""
from __future__ import annotations

import logging
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

logger = logging.getLogger(__name__)

__all__ = ["GlobalBatchDropout", "ReLUThenDropout", "GlobalBatchNorm1d", "global_batch_norm",
           "set_dropout_generator", "keep_mask"]

MASK_PIECE = 1 << 20  # elements of a CPU dropout mask drawn from one seed
_pools: dict[int, ThreadPoolExecutor] = {}
_pools_lock = threading.Lock()


def _pool(workers: int) -> ThreadPoolExecutor:
    with _pools_lock:
        if workers not in _pools:
            _pools[workers] = ThreadPoolExecutor(workers, thread_name_prefix="dropout-mask")
        return _pools[workers]


def keep_mask(shape: tuple[int, ...], keep_prob: float, generator: torch.Generator,
              dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """A tensor of independent bernoulli(keep_prob) draws (0.0 / 1.0) from ``generator``.

    On CPU the draw is split into pieces of ``MASK_PIECE`` elements, each with its own seed
    taken from ``generator``, filled on torch's thread count in parallel: PyTorch draws
    bernoulli on CPU with one serial Mersenne Twister (its parallel MKL path is for Intel
    CPUs only), which took about a quarter of a DIN training step at 64 history positions.
    The numbers depend on the generator's state and the shape only, never on the thread
    count. Elsewhere it is one ``bernoulli_``.
    """
    mask = torch.empty(shape, dtype=dtype, device=device)
    if mask.device.type != "cpu" or mask.numel() <= MASK_PIECE:
        return mask.bernoulli_(keep_prob, generator=generator)
    pieces = mask.view(-1).split(MASK_PIECE)
    seeds = torch.randint(0, 2**62, (len(pieces),), generator=generator, device=generator.device).tolist()

    def fill(i: int) -> None:
        pieces[i].bernoulli_(keep_prob, generator=torch.Generator().manual_seed(seeds[i]))

    workers = max(1, min(torch.get_num_threads(), len(pieces)))
    if workers == 1:
        for i in range(len(pieces)):
            fill(i)
    else:  # torch releases the GIL inside the op: the pieces fill side by side
        list(_pool(workers).map(fill, range(len(pieces))))
    return mask


def _distributed() -> bool:
    import torch.distributed as dist

    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def global_span(local_rows: int, device: torch.device) -> tuple[int, int]:
    """(rows of the global tensor, index of this process's first row) for a layer input of
    ``local_rows`` rows on each process, stacked in rank order."""
    if not _distributed():
        return local_rows, 0
    import torch.distributed as dist

    mine = torch.tensor([local_rows], dtype=torch.long, device=device)
    counts = [torch.zeros_like(mine) for _ in range(dist.get_world_size())]
    dist.all_gather(counts, mine)
    counts = [int(c.item()) for c in counts]
    return sum(counts), sum(counts[:dist.get_rank()])


class GlobalBatchDropout(nn.Module):
    """Dropout whose mask is drawn for the whole global batch, then sliced to this
    process's rows, so that P processes apply the very masks one process would.

    With a generator set (the trainer sets one, seeded the same on every process, for each
    epoch) the mask of an (n, ...) input is ``bernoulli(1 - p)`` over a (global rows, ...)
    tensor (:func:`keep_mask`), this process's rows kept, scaled by 1 / (1 - p): the distribution of
    ``nn.Dropout``, and the same numbers whatever the process count. The price is drawing
    the global mask on each process (free on one process). Without a generator it is
    ``F.dropout``.
    """

    def __init__(self, p: float) -> None:
        super().__init__()
        if not 0.0 <= p < 1.0:
            raise ValueError(f"dropout rate must be in [0, 1), got {p}")
        self.p = p
        self.generator: torch.Generator | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0:
            return x
        if self.generator is None:
            return F.dropout(x, self.p, training=True)
        return x * self.scaled_keep(x)

    def scaled_keep(self, x: torch.Tensor) -> torch.Tensor:
        """This process's rows of the global mask, as 0 or 1 / (1 - p), shaped like x."""
        scale = 1.0 / (1.0 - self.p)
        if self.generator is None:
            return torch.empty_like(x).bernoulli_(1.0 - self.p).mul_(scale)
        global_rows, first = global_span(x.shape[0], x.device)
        keep = keep_mask((global_rows, *x.shape[1:]), 1.0 - self.p, self.generator, x.dtype, x.device)
        return keep[first : first + x.shape[0]].mul_(scale)

    def extra_repr(self) -> str:
        return f"p={self.p}"


class _ReLUThenScale(torch.autograd.Function):
    """relu(x) * keep in place; the backward needs only the output (keep is 0 or ``scale``)."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, keep: torch.Tensor, scale: float) -> torch.Tensor:
        ctx.mark_dirty(x)
        out = x.clamp_min_(0.0).mul_(keep)
        ctx.save_for_backward(out)
        ctx.scale = scale
        return out

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None, None]:
        (out,) = ctx.saved_tensors
        # out > 0 exactly where x > 0 and the position was kept: there d out / dx = scale.
        # ReLU's own backward kernel (grad where out > 0, else 0): the same values as
        # torch.where(out > 0, grad, 0.0), several times faster on CPU
        return torch.ops.aten.threshold_backward(grad, out, 0.0).mul_(ctx.scale), None, None


class ReLUThenDropout(GlobalBatchDropout):
    """``ReLU(inplace=True)`` followed by :class:`GlobalBatchDropout`, as one step.

    The same function and the same masks as the two layers in a row, but only the output
    is kept for the backward pass (the next Linear keeps it anyway), where the pair kept
    the ReLU output, the mask and the output: at the DIN's attention MLP, with a row per
    history position, that is two thirds of its activation memory and two passes over it.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0:
            return F.relu(x, inplace=True)
        return _ReLUThenScale.apply(x, self.scaled_keep(x), 1.0 / (1.0 - self.p))


def set_dropout_generator(model: nn.Module, generator: torch.Generator | None) -> None:
    """Give every :class:`GlobalBatchDropout` in ``model`` the shared generator (None:
    plain per-process dropout)."""
    for module in model.modules():
        if isinstance(module, GlobalBatchDropout):
            module.generator = generator


class _AllReduceSum(torch.autograd.Function):
    """Sum over processes; the gradient of a sum is summed the same way."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor) -> torch.Tensor:
        out = x.clone()
        torch.distributed.all_reduce(out)
        return out

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.clone()
        torch.distributed.all_reduce(grad)
        return grad


class GlobalBatchNorm1d(nn.BatchNorm1d):
    """BatchNorm1d whose training statistics cover the whole global batch, on CPU groups.

    PyTorch's SyncBatchNorm runs on GPUs only. This does the same over any process group
    (gloo): the per-channel sum, count and centred sum of squares are summed across
    processes with a differentiable all-reduce, so forward and backward equal one
    process's batch norm over the global batch. Evaluation mode is plain BatchNorm1d; the
    parameters and buffers are the same (state dicts load either way).
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and _distributed()):
            return super().forward(x)
        all_reduce = _AllReduceSum.apply
        dims = [0, *range(2, x.dim())]
        shape = [1, x.shape[1]] + [1] * (x.dim() - 2)
        count = x.new_tensor([x.numel() / x.shape[1]])
        total = all_reduce(torch.cat([x.sum(dims), count]))
        n = total[-1]
        mean = total[:-1] / n
        centred = x - mean.view(shape)
        var = all_reduce(centred.pow(2).sum(dims)) / n  # biased, as batch norm normalises
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked += 1
                factor = 1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum
                self.running_mean.mul_(1 - factor).add_(mean.detach(), alpha=factor)
                self.running_var.mul_(1 - factor).add_(var.detach() * n / (n - 1).clamp(min=1), alpha=factor)
        y = centred * torch.rsqrt(var.view(shape) + self.eps)
        if self.affine:
            y = y * self.weight.view(shape) + self.bias.view(shape)
        return y


def global_batch_norm(model: nn.Module, num_processes: int, device_type: str) -> nn.Module:
    """With several processes, make batch norm use the global batch's statistics.

    Without this every process would normalise with its own ``batch_size / P`` rows,
    which is a different model from the one-process (challenge) DIN. CUDA: PyTorch's
    SyncBatchNorm; CPU: :class:`GlobalBatchNorm1d`.
    """
    if num_processes == 1:
        return model
    if device_type == "cuda":
        return nn.SyncBatchNorm.convert_sync_batchnorm(model)
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if type(child) is nn.BatchNorm1d:
                swapped = GlobalBatchNorm1d(child.num_features, child.eps, child.momentum, child.affine,
                                            child.track_running_stats)
                swapped.load_state_dict(child.state_dict())
                setattr(parent, name, swapped)
    return model
