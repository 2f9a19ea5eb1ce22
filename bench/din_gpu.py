"""The challenge's DIN on one GPU: training samples/s, peak GPU memory, a 3.6M-row epoch.

    python bench/din_gpu.py                                   # batch 8192, full histories
    python bench/din_gpu.py --mixed-precision bf16 --batch-size 8192
    python bench/din_gpu.py --allow-cpu --batch-size 256 --batches 2   # dry run of the code path

Trains ctr_eval's DIN (Task 1 configuration, the exact attention) through the same pieces
the trainer uses (one Accelerator from ``ctr_eval._runtime.make_accelerator``, the fused
Adam of ``ctr_eval.train.make_optimizer``, gradient clipping, the loss and regularizer) on
random batches of the real data's shape: 91,717 items, every one of the 64 history
positions filled (the worst case for padding skips). Each step includes moving the batch
to the device. Prints samples/s over the timed steps (after warm-up, with the device
synchronised), peak GPU memory, and the time of one epoch of MicroLens_1M_x1's 3,600,000
train rows at that rate. Target on one H100-class GPU: a 3.6M-row epoch under 30 s.

Without a GPU it refuses, unless ``--allow-cpu`` asks for a dry run on the CPU (figures
then say "cpu" and mean nothing for the target).
"""
from __future__ import annotations

import argparse
import sys
import time

import torch

from benchlib import add_batch_size, add_random_batch_args, random_din_batches

TRAIN_ROWS = 3_600_000
TARGET_EPOCH_SECONDS = 30.0


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_batch_size(p, 8192)
    add_random_batch_args(p)
    p.add_argument("--batches", type=int, default=20, help="timed steps")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--mixed-precision", choices=["no", "bf16", "fp16"], default="no")
    p.add_argument("--allow-cpu", action="store_true", help="dry run on the CPU when there is no GPU")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from ctr_eval._runtime import RunOptions, make_accelerator
    from ctr_eval.config import resolve_config
    from ctr_eval.models import build_model
    from ctr_eval.train import make_optimizer

    if not torch.cuda.is_available() and not args.allow_cpu:
        print("din_gpu: no CUDA device here; this bench measures a GPU (pass --allow-cpu for a dry "
              "run of the code path on the CPU)", file=sys.stderr)
        return 2
    device = "cuda" if torch.cuda.is_available() else "cpu"
    acc = make_accelerator(RunOptions(device=device, mixed_precision=args.mixed_precision, progress=False))
    cfg = resolve_config("din", task1=True, batch_size=args.batch_size)
    table, make_batch, _ = random_din_batches(args.items, args.positions, args.batch_size, cfg)
    torch.manual_seed(cfg.seed)
    model = build_model("din", cfg, table)
    optimizer = make_optimizer(model, cfg.learning_rate)
    model, optimizer = acc.prepare(model, optimizer)
    model.train()
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    seconds = 0.0
    for step in range(args.warmup + args.batches):
        batch = make_batch(step)
        _synchronise(device)
        began = time.perf_counter()
        batch = {k: v.to(acc.device, non_blocking=True) for k, v in batch.items()}
        with acc.autocast():
            loss = model.loss(model(batch), batch["label"]) + model.regularization_loss()
        acc.backward(loss)
        acc.clip_grad_norm_(model.parameters(), cfg.max_gradient_norm)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        _synchronise(device)
        if step >= args.warmup:
            seconds += time.perf_counter() - began
    rate = args.batches * args.batch_size / seconds
    epoch = TRAIN_ROWS / rate
    name = torch.cuda.get_device_name() if device == "cuda" else "cpu (dry run: not a GPU figure)"
    print(f"device: {name}; batch {args.batch_size}, {args.positions} filled history positions, "
          f"{args.items:,} items, mixed precision {args.mixed_precision}")
    print(f"training: {rate:,.0f} samples/s over {args.batches} steps after {args.warmup} warm-up")
    if device == "cuda":
        print(f"peak GPU memory: {torch.cuda.max_memory_allocated() / 2**30:.2f} GiB allocated, "
              f"{torch.cuda.max_memory_reserved() / 2**30:.2f} GiB reserved")
    verdict = "meets" if epoch < TARGET_EPOCH_SECONDS else "misses"
    print(f"one epoch of {TRAIN_ROWS:,} rows at this rate: {epoch:,.1f} s "
          f"({verdict} the {TARGET_EPOCH_SECONDS:.0f} s target{'' if device == 'cuda' else ', on a CPU'})")
    return 0


def _synchronise(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


if __name__ == "__main__":
    sys.exit(main())
