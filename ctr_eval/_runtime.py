"""Devices, processes and batching for the trainer and for prediction.

One Accelerator per run; the epoch's global batches and each process's share of them;
sharded scoring gathered back into row order.
"""
from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import platform
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from accelerate import Accelerator
from accelerate.utils import DistributedDataParallelKwargs, send_to_device
from ctr_eval.progress import progress as progress_of

from ctr_eval.checks import check_positive_int

logger = logging.getLogger(__name__)

MIXED_PRECISION = ("no", "bf16", "fp16")
DEVICES = (None, "cpu", "cuda")


@dataclass
class RunOptions:
    """Run controls that do not change what a result means (the epoch cap is recorded)."""

    max_epochs: int | None = None  # cap on top of config.epochs (e.g. for a demo)
    device: str | None = None  # None: Accelerate's choice; "cpu"; "cuda"
    mixed_precision: str = "no"  # "no", "bf16", "fp16": autocast for GPUs (bf16 also on CPU)
    progress: bool = True  # progress per epoch on the main process (ctr_eval.progress)
    eval_batch_size: int | None = None  # default max(batch_size, 4096): no effect on scores
    num_threads: int | None = None  # torch CPU threads; default cores / processes
    # Speed benchmarks only: each epoch trains its first max_steps batches and stops
    # (recorded in the result; such a run's AUC is not a trained model's).
    max_steps: int | None = None

    def check(self) -> None:
        for name in ("max_epochs", "eval_batch_size", "num_threads", "max_steps"):
            check_positive_int(name, getattr(self, name), allow_none=True)
        if self.device not in DEVICES:
            raise ValueError(f"device must be one of {DEVICES}, got {self.device!r}")
        if self.device == "cuda" and not torch.cuda.is_available():
            raise ValueError("device='cuda' was asked for but torch sees no CUDA device")
        if self.mixed_precision not in MIXED_PRECISION:
            raise ValueError(f"mixed_precision must be one of {MIXED_PRECISION}, got {self.mixed_precision!r}")
        if self.mixed_precision == "fp16" and wants_cpu(self):
            # Accelerate would silently train in float32 while the result claimed fp16
            raise ValueError("mixed_precision='fp16' needs a GPU (Accelerate runs fp16 autocast only "
                             "there); on CPU use 'bf16' or 'no'")


def pin_mkl_threads() -> bool:
    """Stop MKL from changing its thread count at run time (MKL_DYNAMIC=FALSE).

    With dynamic threading on (MKL's default) a loaded machine can make a matrix product
    run on fewer threads, which changes the float summation order and so the last bits of
    the result: two identical CPU runs then drift apart. Intel's reproducibility notes
    ask for dynamic threading off; torch links MKL statically but exports its
    C function ``MKL_Set_Dynamic``. Returns whether the call was made.
    """
    if not torch.backends.mkl.is_available():
        return False
    import ctypes

    lib = Path(torch.__file__).parent / "lib" / "libtorch_cpu.so"
    try:
        ctypes.CDLL(str(lib)).MKL_Set_Dynamic(ctypes.c_int(0))  # the C API (by value)
    except (OSError, AttributeError):  # another platform or build: nothing to pin
        logger.debug("MKL_Set_Dynamic not found in %s", lib)
        return False
    return True


# glibc mallopt parameters (malloc.h) and their documented defaults
_M_TRIM_THRESHOLD, _M_MMAP_MAX = -1, -4
_DEFAULT_TRIM_THRESHOLD, _DEFAULT_MMAP_MAX = 128 * 1024, 65536
_NEVER_TRIM = -1  # the documented M_TRIM_THRESHOLD value that turns trimming off


def _glibc() -> Any:
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return None
    try:
        return ctypes.CDLL("libc.so.6")
    except OSError:
        return None


@contextlib.contextmanager
def reuse_freed_memory() -> Any:
    """Within the block, freed host memory stays with the process for the next tensor.

    glibc serves every allocation above 32 MB with a fresh mmap and unmaps it on free, so
    each of the many short-lived tensors of a CPU training step (a DIN step at batch 8192
    makes hundreds of MB of them) comes back as new pages that the kernel must fault in and
    zero: this took about half of a DIN step at 64 history positions (bench/README.md).
    Here large blocks come from the heap instead (no mmap) and free heap is kept rather
    than returned. Results are unchanged; resident memory stays near the peak
    while the block runs. On leaving, glibc's defaults are set again and the free memory
    is returned (malloc_trim). Does nothing off glibc.
    """
    libc = _glibc()
    if libc is None:
        yield
        return
    libc.mallopt(_M_MMAP_MAX, 0)
    libc.mallopt(_M_TRIM_THRESHOLD, _NEVER_TRIM)
    try:
        yield
    finally:
        libc.mallopt(_M_MMAP_MAX, _DEFAULT_MMAP_MAX)
        libc.mallopt(_M_TRIM_THRESHOLD, _DEFAULT_TRIM_THRESHOLD)
        libc.malloc_trim(0)


def prepare(acc: Accelerator, *objects: Any) -> Any:
    """``acc.prepare`` with DDP told not to re-send every buffer at each forward.

    The model's buffers include the whole item table; batch norm keeps the processes'
    running statistics equal by itself (see :func:`global_batch_norm`) and rank 0's are
    broadcast again before evaluation. torch 2.14 deprecates ``broadcast_buffers`` in
    favour of ``forward_sync_buffers``, which Accelerate's DDP options do not offer yet,
    so that one deprecation notice is silenced here.
    """
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*broadcast_buffers.* is deprecated", category=FutureWarning)
        return acc.prepare(*objects)


def wants_cpu(options: RunOptions) -> bool:
    """Whether Accelerate must be told cpu=True.

    Accelerate only forms a multi-process CPU group (gloo) when told cpu=True, so a
    machine without a GPU asks for it explicitly (else torchrun's processes would each
    train alone).
    """
    no_gpu = not torch.cuda.is_available() and not torch.backends.mps.is_available()
    return options.device == "cpu" or (options.device is None and no_gpu)


def default_cpu_threads(processes: int = 1) -> int:
    """Torch threads per process on CPU: ``OMP_NUM_THREADS`` when it is set (to share the
    machine with another job: two jobs of 2 threads each on 2 cores run 4x slower than
    one, of 1 thread each near full speed; bench/beside.py), else the cores shared among
    the processes."""
    env = os.environ.get("OMP_NUM_THREADS", "").strip()
    if env.isdigit() and int(env) > 0:
        return int(env)
    return max(1, (os.cpu_count() or 1) // processes)


def make_accelerator(options: RunOptions) -> Accelerator:
    """One Accelerator for a run; on CPU, torch threads = cores / processes (see
    :func:`default_cpu_threads`).

    Mixed precision is Accelerate's autocast (fp16 with a gradient scaler). It is meant for
    GPUs; bf16 also runs on CPU (more slowly on most CPUs), which is how the tests exercise
    the autocast code paths on machines without a GPU. fp16 is GPU-only.
    """
    options.check()
    acc = Accelerator(cpu=wants_cpu(options), mixed_precision=options.mixed_precision,
                      kwargs_handlers=[DistributedDataParallelKwargs(broadcast_buffers=False)])
    if acc.device.type == "cpu":
        threads = options.num_threads or default_cpu_threads(acc.num_processes)
        torch.set_num_threads(threads)
        pin_mkl_threads()
    return acc


def global_batches(n: int, batch_size: int, seed: int, epoch: int, num_processes: int,
                   shuffle: bool = True) -> list[np.ndarray]:
    """The epoch's global batches (same on every process), shuffled from (seed, epoch).

    A last batch too small to give every process 2 rows (batch norm needs 2) joins the one
    before it; this only touches a tail of fewer than 2 * num_processes rows.
    """
    order = np.random.default_rng([seed, epoch]).permutation(n) if shuffle else np.arange(n)
    cuts = list(range(0, n, batch_size)) + [n]
    batches = [order[a:b] for a, b in zip(cuts[:-1], cuts[1:])]
    if len(batches) > 1 and len(batches[-1]) < 2 * num_processes:
        tail = batches.pop()
        batches[-1] = np.concatenate([batches[-1], tail])
    return batches


def process_bounds(m: int, rank: int, num_processes: int) -> tuple[int, int]:
    """[start, stop) of process ``rank``'s contiguous share of an m-row global batch."""
    return rank * m // num_processes, (rank + 1) * m // num_processes


def process_slice(batch: np.ndarray, rank: int, num_processes: int) -> np.ndarray:
    start, stop = process_bounds(len(batch), rank, num_processes)
    return batch[start:stop]

def predict_probs(acc: Accelerator, unwrapped: Any, split: Any, batch_size: int, progress: bool = False) -> np.ndarray:
    """Sigmoid scores of ``unwrapped`` on ``split``: rows split contiguously across processes,
    gathered back in row order (what ``gather_for_metrics`` does for a prepared loader)."""
    n, p, rank = len(split), acc.num_processes, acc.process_index
    if p > 1:  # identical already with global batch norm; rank 0's, to be sure
        for module in unwrapped.modules():
            if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
                for buf in module.buffers():
                    torch.distributed.broadcast(buf.data, src=0)
    chunk = -(-n // p)
    start, stop = min(rank * chunk, n), min((rank + 1) * chunk, n)
    unwrapped.eval()
    parts = []
    with torch.no_grad():
        steps = range(start, stop, batch_size)
        for a in progress_of(steps, desc="predict", unit="batch", enabled=progress and acc.is_main_process):
            rows = torch.arange(a, min(a + batch_size, stop))
            batch = send_to_device(split.batch(rows), acc.device)
            parts.append(torch.sigmoid(unwrapped(batch).float()))
    local = torch.cat(parts) if parts else torch.zeros(0, device=acc.device)
    if p == 1:
        return local.cpu().numpy()
    padded = acc.pad_across_processes(local, dim=0)
    width = padded.shape[0]
    gathered = acc.gather(padded).cpu()
    pieces = [gathered[q * width : q * width + max(0, min(chunk, n - q * chunk))] for q in range(p)]
    return torch.cat(pieces).numpy()
