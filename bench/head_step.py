"""Training steps/s of the trained heads' networks at a given item count, with the per-item
residual updated densely (AdamW over the whole table, as before) and sparsely (lazy Adam on
the rows a step touches, as the heads train now), and without a residual.

    python bench/head_step.py                      # 10,000 and 91,717 items (small, full)
    python bench/head_step.py --items 91717 --steps 100

Random features (sbert 384 + pixels 232 dims) and random pairs, batch 1024, the heads'
InfoNCE; the figure is steps/s over ``--steps`` steps after 5 warm-up steps.
"""
from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from mmembed.fusion._train_loop import info_nce
from mmembed.fusion.contrastive import ContrastiveNet
from mmembed.fusion.gated import GatedNet


def steps_per_s(net_class: type, n_items: int, mode: str, steps: int, batch: int = 1024) -> float:
    torch.manual_seed(0)
    net = net_class([384, 232], 128, 128, None if mode == "none" else np.ones(n_items, np.float32))
    if mode == "dense":
        net.residual.embedding.sparse = False
    blocks = [torch.randn(n_items, 384), torch.randn(n_items, 232)]
    table = [p for name, p in net.named_parameters() if "embedding" in name]
    rest = [p for name, p in net.named_parameters() if "embedding" not in name]
    optimizers = [torch.optim.AdamW(rest if mode == "sparse" else list(net.parameters()), lr=1e-2)]
    if mode == "sparse":
        optimizers.append(torch.optim.SparseAdam(table, lr=1e-2))
    rng = np.random.default_rng(0)

    def step() -> None:
        pairs = torch.as_tensor(rng.integers(0, n_items, (batch, 2)))
        unique, inverse = torch.unique(pairs.reshape(-1), return_inverse=True)
        vectors = net([b[unique] for b in blocks], unique)[inverse]
        loss = info_nce(vectors[0::2], vectors[1::2], torch.arange(batch), pairs[:, 0], pairs[:, 1],
                        None, 1.0).mean()
        for optimizer in optimizers:
            optimizer.zero_grad()
        loss.backward()
        for optimizer in optimizers:
            optimizer.step()

    for _ in range(5):
        step()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    return steps / (time.perf_counter() - start)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--items", default="10000,91717")
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    print("| items | network | dense residual | sparse residual (now) | no residual |")
    print("| ---: | --- | ---: | ---: | ---: |")
    for n_items in map(int, args.items.split(",")):
        for net_class in (ContrastiveNet, GatedNet):
            cells = [f"{steps_per_s(net_class, n_items, mode, args.steps):.1f}" for mode in ("dense", "sparse", "none")]
            print(f"| {n_items:,} | {net_class.__name__} | " + " | ".join(cells) + " |", flush=True)


if __name__ == "__main__":
    main()
