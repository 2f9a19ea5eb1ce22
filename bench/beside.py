"""A head fit's training speed alone and beside another busy torch process, by thread count.

    python bench/beside.py                 # GatedNet at 10,000 items (small), 40 steps each
    python bench/beside.py --steps 100

On a small machine two heavy jobs at once can cost far more than half each: when both use
as many intra-op threads as there are cores, each one's threads wait for the other's at
every parallel region. This measures it: head steps/s (the gated head's network, batch
1,024 pairs, sparse residual, as ``bench/head_step.py``) alone, then beside a neighbour
process that multiplies 512 x 512 matrices in a loop, for each pair of thread counts
(head, neighbour); the neighbour's matmuls/s over the same window are printed too, so
the pair's total work is visible.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time

import torch

sys.path.insert(0, os.path.dirname(__file__))
from head_step import steps_per_s  # noqa: E402

from mmembed.fusion.gated import GatedNet  # noqa: E402

NEIGHBOUR = """
import sys, time, torch
torch.set_num_threads(int(sys.argv[1]))
a = torch.randn(512, 512)
done, start = 0, time.perf_counter()
while True:
    a = torch.tanh(a @ a)
    done += 1
    if done % 50 == 0:
        with open(sys.argv[2], "w") as f:
            f.write(f"{done} {time.perf_counter() - start}")
"""


def neighbour_rate(path: str) -> tuple[int, float]:
    try:
        with open(path) as f:
            done, seconds = f.read().split()
        return int(done), float(seconds)
    except (OSError, ValueError):
        return 0, 0.0


def measure(head_threads: int, neighbour_threads: int, items: int, steps: int) -> tuple[float, float | None]:
    """Head steps/s with ``head_threads`` threads; beside a neighbour of that many threads
    (0: alone). Returns (head steps/s, neighbour matmuls/s over the head's window or None)."""
    torch.set_num_threads(head_threads)
    if neighbour_threads == 0:
        return steps_per_s(GatedNet, items, "sparse", steps), None
    with tempfile.TemporaryDirectory() as tmp:
        progress = os.path.join(tmp, "progress")
        proc = subprocess.Popen([sys.executable, "-c", NEIGHBOUR, str(neighbour_threads), progress])
        try:
            time.sleep(3)  # let it start and warm up
            before = neighbour_rate(progress)
            rate = steps_per_s(GatedNet, items, "sparse", steps)
            after = neighbour_rate(progress)
        finally:
            proc.kill()
            proc.wait()
    seconds = after[1] - before[1]
    return rate, ((after[0] - before[0]) / seconds if seconds > 0 else None)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--items", type=int, default=10000)
    p.add_argument("--steps", type=int, default=40)
    args = p.parse_args()
    print(f"cores: {os.cpu_count()}; torch {torch.__version__}; GatedNet, {args.items:,} items")
    print("| head threads | neighbour threads | head steps/s | neighbour matmuls/s |")
    print("| ---: | ---: | ---: | ---: |")
    for head_threads, neighbour_threads in ((2, 0), (1, 0), (2, 2), (1, 1), (2, 1), (1, 2)):
        rate, other = measure(head_threads, neighbour_threads, args.items, args.steps)
        shown = "alone" if neighbour_threads == 0 else str(neighbour_threads)
        print(f"| {head_threads} | {shown} | {rate:.1f} | {'-' if other is None else f'{other:.0f}'} |",
              flush=True)
    # the neighbour alone, for its side of the ratio
    for threads in (2, 1):
        with tempfile.TemporaryDirectory() as tmp:
            progress = os.path.join(tmp, "progress")
            proc = subprocess.Popen([sys.executable, "-c", NEIGHBOUR, str(threads), progress])
            time.sleep(3)
            before = neighbour_rate(progress)
            time.sleep(8)
            after = neighbour_rate(progress)
            proc.kill()
            proc.wait()
        seconds = after[1] - before[1]
        print(f"neighbour alone, {threads} thread(s): "
              f"{(after[0] - before[0]) / seconds if seconds > 0 else float('nan'):.0f} matmuls/s")


if __name__ == "__main__":
    main()
