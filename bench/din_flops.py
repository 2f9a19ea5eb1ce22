"""FLOPs per training sample of the challenge's DIN, and the share of this CPU's matmul rate
that ctr_eval's training achieves.

    python bench/din_flops.py                         # synthetic `small` train batches
    python bench/din_flops.py --random --positions 64 --items 91717   # the peer's shape
    python bench/din_flops.py --impl plain --batches 2                # FuxiCTR's formulation

Counting rules (a multiply-add = 2 FLOPs; a training step ~ 3x the forward pass: the
backward of a matmul computes one product for the input gradient and one for the weight
gradient):
  * "useful" FLOPs = the PLAIN formulation, as FuxiCTR computes it: every item vector built
    per (sample, position), the attention MLP over [q, k, q-k, q*k] (4*256 -> 512 -> 256 -> 1)
    at every one of the P history positions, padded ones included, then the DNN
    640 -> 1024 -> 512 -> 256 -> 1;
  * "executed" FLOPs = what ctr_eval's exact-algebra DIN runs on the measured batches: item
    vectors once per distinct item of the batch, the first attention layer split into a
    per-sample q-part, a per-distinct-item k-part and a per-position (q*k) part, and no work
    at padded positions.
Achieved GFLOP/s = FLOPs per sample x training samples/s (forward, loss, backward, gradient
clipping and the Adam step timed together, data batching included).
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from dataclasses import dataclass

import numpy as np
import torch

from benchlib import add_batch_size, add_data_args, add_random_batch_args, dataset_split, random_din_batches

# Published figures of the peer (FuxiCTR 2.3.10, challenge config, batch 8192, this 2-core CPU,
# 64 history positions, 91,717 items), from the project's DESIGN notes.
PEER = {"mflop_per_sample": 264.0, "attention_share": 0.946, "gflops": 84.0,
        "matmul_gflops": 356.0, "fraction": 0.235, "samples_per_s": 317.0}


@dataclass(frozen=True)
class DinShape:
    """The DIN's sizes (defaults: the challenge's Task 1 configuration)."""

    embedding_dim: int = 64
    pretrained_dim: int = 128
    tags_per_item: int = 5
    attention_units: tuple[int, ...] = (512, 256)
    dnn_units: tuple[int, ...] = (1024, 512, 256)

    @property
    def item_width(self) -> int:  # item_id emb + pooled tags + projected item_emb_d128
        return 2 * self.embedding_dim + self.pretrained_dim

    @property
    def dnn_input(self) -> int:  # likes + views + target + pooled history
        return 2 * self.embedding_dim + 2 * self.item_width


def mlp_flops(widths: list[int]) -> int:
    """Forward FLOPs of a chain of dense layers widths[0] -> widths[1] -> ... (2 per MAC)."""
    return sum(2 * a * b for a, b in zip(widths[:-1], widths[1:]))


def item_vector_flops(s: DinShape) -> int:
    """One item vector: the 128x128 projection plus the 5-tag masked mean."""
    return mlp_flops([s.pretrained_dim, s.pretrained_dim]) + 2 * s.tags_per_item * s.embedding_dim


def plain_forward(s: DinShape, positions: int) -> dict[str, float]:
    """Forward FLOPs per sample of FuxiCTR's formulation, by part."""
    w = s.item_width
    attention_mlp = positions * mlp_flops([4 * w, *s.attention_units, 1])
    return {
        "attention MLP": attention_mlp,
        # [q, k, q-k, q*k] build (2w) and the score-weighted sum over positions (2w)
        "attention elementwise": positions * 4 * w,
        "item vectors": (positions + 1) * item_vector_flops(s),
        "DNN": mlp_flops([s.dnn_input, *s.dnn_units, 1]),
    }


def exact_forward(s: DinShape, unique_items: float, real_positions: float) -> dict[str, float]:
    """Forward FLOPs per sample that ctr_eval's exact-algebra DIN executes, by part.

    unique_items / real_positions: distinct item ids and non-padded history positions per
    sample, averaged over the measured batches.
    """
    w, a1 = s.item_width, s.attention_units[0]
    rest = mlp_flops([a1, *s.attention_units[1:], 1])
    return {
        "attention q-part (per sample)": mlp_flops([w, a1]),
        "attention k-part (per distinct item)": unique_items * mlp_flops([w, a1]),
        "attention per real position": real_positions * (mlp_flops([w, a1]) + rest + w + 2 * a1 + 2 * w),
        "item vectors (per distinct item)": unique_items * item_vector_flops(s),
        "DNN": mlp_flops([s.dnn_input, *s.dnn_units, 1]),
    }


def training(parts: dict[str, float]) -> dict[str, float]:
    return {k: 3.0 * v for k, v in parts.items()}


def matmul_rate(size: int, repeats: int) -> tuple[float, float]:
    """(best, median) GFLOP/s of a size x size float32 matmul on this machine."""
    a = torch.randn(size, size)
    b = torch.randn(size, size)
    torch.mm(a, b)  # warm-up
    rates = []
    for _ in range(repeats):
        began = time.perf_counter()
        torch.mm(a, b)
        rates.append(2.0 * size ** 3 / (time.perf_counter() - began) / 1e9)
    return max(rates), statistics.median(rates)


# --------------------------------------------------------------------------- training

def real_batches(args: argparse.Namespace, cfg):
    """(item table, batch iterator factory, history positions) from a dataset root."""
    from ctr_eval.data import load_item_table, load_split

    root = dataset_split(args).parent
    table = load_item_table(root)
    split = load_split(root, "train", max_len=cfg.max_len)
    order = torch.from_numpy(np.random.default_rng(0).permutation(len(split)))

    def batch(i: int) -> dict[str, torch.Tensor]:
        rows = order[(i * args.batch_size) % len(split):][:args.batch_size]
        return split.batch(rows)

    return table, batch, int(split.item_seq.shape[1])


def measure_training(args: argparse.Namespace) -> dict[str, float]:
    from ctr_eval.config import resolve_config
    from ctr_eval.models import build_model
    from ctr_eval.train import make_optimizer

    cfg = resolve_config("din", task1=True, batch_size=args.batch_size)
    table, make_batch, positions = (random_din_batches(args.items, args.positions, args.batch_size, cfg) if args.random
                                         else real_batches(args, cfg))
    torch.manual_seed(cfg.seed)
    model = build_model("din", cfg, table, attention_impl=args.impl)
    model.train()
    optimizer = make_optimizer(model, cfg.learning_rate)
    seconds, samples, unique, real = 0.0, 0, 0.0, 0.0
    for i in range(args.warmup + args.batches):
        began = time.perf_counter()
        batch = make_batch(i)
        loss = model.loss(model(batch), batch["label"]) + model.regularization_loss()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.max_gradient_norm)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        elapsed = time.perf_counter() - began
        if i >= args.warmup:
            seq = batch["item_seq"].long()
            b = seq.shape[0]
            seconds += elapsed
            samples += b
            unique += torch.unique(torch.cat([batch["item_id"].long(), seq.reshape(-1)])).numel()
            real += float((seq != 0).sum())
    return {"samples_per_s": samples / seconds, "seconds": seconds, "samples": samples,
            "positions": positions, "unique_per_sample": unique / samples,
            "real_per_sample": real / samples}


def print_parts(title: str, parts: dict[str, float]) -> float:
    total = sum(parts.values())
    print(f"\n{title}: {total / 1e6:.1f} MFLOP per training sample")
    for name, value in parts.items():
        print(f"  {name:<40} {value / 1e6:9.2f} MFLOP  {100 * value / total:5.1f}%")
    return total


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    add_data_args(p)
    p.add_argument("--random", action="store_true", help="random items + full histories (see below)")
    add_random_batch_args(p)
    p.add_argument("--impl", choices=["exact", "plain"], default="exact")
    add_batch_size(p, 8192)
    p.add_argument("--batches", type=int, default=4, help="timed training steps")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--matmul-size", type=int, default=4096)
    p.add_argument("--matmul-repeats", type=int, default=5)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    shape = DinShape()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    peer_plain = training(plain_forward(shape, 64))
    print_parts("Plain DIN (FuxiCTR's formulation), 64 history positions", peer_plain)
    attention_share = peer_plain["attention MLP"] / sum(peer_plain.values())
    print(f"  attention MLP share {100 * attention_share:.1f}%  "
          f"(peer's figures: {PEER['mflop_per_sample']:.0f} MFLOP, {100 * PEER['attention_share']:.1f}%)")

    best, median = matmul_rate(args.matmul_size, args.matmul_repeats)
    print(f"\nfloat32 matmul {args.matmul_size}x{args.matmul_size}: best {best:.0f} GFLOP/s, "
          f"median {median:.0f} GFLOP/s (peer's machine figure ~{PEER['matmul_gflops']:.0f})")

    run = measure_training(args)
    useful = sum(training(plain_forward(shape, run["positions"])).values())
    executed = print_parts(
        f"Executed by ctr_eval's {args.impl} DIN on these batches ({run['positions']} positions, "
        f"{run['real_per_sample']:.1f} real, {run['unique_per_sample']:.2f} distinct items per sample)",
        training(exact_forward(shape, run["unique_per_sample"], run["real_per_sample"]))
        if args.impl == "exact" else training(plain_forward(shape, run["positions"])))
    rate = run["samples_per_s"]
    print(f"\nctr_eval training ({args.impl}, batch {args.batch_size}, {args.batches} timed steps): "
          f"{rate:.0f} samples/s")
    print(f"  useful (plain, {run['positions']} positions) {useful / 1e6:.1f} MFLOP/sample -> "
          f"{useful * rate / 1e9:.1f} GFLOP/s = {100 * useful * rate / 1e9 / best:.1f}% of matmul best")
    print(f"  executed {executed / 1e6:.1f} MFLOP/sample -> {executed * rate / 1e9:.1f} GFLOP/s = "
          f"{100 * executed * rate / 1e9 / best:.1f}% of matmul best")
    print(f"  peer: {PEER['samples_per_s']:.0f} samples/s, {PEER['gflops']:.0f} GFLOP/s = "
          f"{100 * PEER['fraction']:.1f}% of ~{PEER['matmul_gflops']:.0f} (64 positions, 91,717 items)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
