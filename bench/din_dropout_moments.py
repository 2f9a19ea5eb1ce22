"""Do ctr_eval's and FuxiCTR's DIN draw the same gradient under dropout? One batch, many draws.

    python bench/din_dropout_moments.py                       # tiny set, seed 1, 200 draws a side
    python bench/din_dropout_moments.py --scale small --train-rows 50000 --batch-size 1024 --draws 100

Without dropout the two implementations give the same loss and gradients from the same
weights (see din_vs_fuxictr.py --matched). With the challenge's dropout each draws its own
masks, so one training run of each cannot be compared step by step, and whole runs differ by
the seed-to-seed spread. This bench checks the dropout itself: from FuxiCTR's initial
weights of one seed and the first training batch of that seed, each side computes the
training loss (BCE + embedding regularizer) and every parameter's gradient ``--draws`` times,
each time with fresh dropout masks and nothing else changed, and the script compares the
two sides' mean gradients. If both draw from one distribution, the squared distance between
the two means equals, on average, the sum of the variances of the two means, so the printed
ratio (distance^2 / that sum) is about 1. Read it with care: for a small tensor, or one whose
gradient noise lies in a few directions (the attention MLP's later layers here), the ratio
scatters like a chi-square of few degrees of freedom (2-7 happens by chance at 100 draws).
The test that decides: under one distribution the ratio does not grow with --draws; under
two, it grows in proportion to it. The losses' means are compared by difference over its
standard error.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np

import din_vs_fuxictr as pair  # bench/ is this script's folder, first on sys.path
from benchlib import add_batch_size, add_data_args, dataset_split, gradient_moments, logger, make_bench_root

log = logger("din_dropout_moments")


def ctr_eval_moments(bench_root: Path, init: Path, batch_rows: np.ndarray, args: argparse.Namespace):
    """ctr_eval's side, as its trainer takes a step: the model from FuxiCTR's weights, the
    global-batch dropout generator, BCE + regularizer; no optimizer step."""
    import torch

    from ctr_eval.config import resolve_config
    from ctr_eval.data import load_item_table, load_split
    from ctr_eval.global_batch import set_dropout_generator
    from ctr_eval.models import build_model

    torch.set_num_threads(args.threads or torch.get_num_threads())
    cfg = resolve_config("din", task1=False, seed=args.seed, batch_size=args.batch_size,
                         attention_dropout=args.attention_dropout)
    table = load_item_table(bench_root)
    model = build_model("din", cfg, table, attention_impl=args.attention_impl)
    start = dict(np.load(init))
    model.load_state_dict(pair.fuxictr_state_for_ctr_eval(start, model))
    batch = load_split(bench_root, "train", max_len=cfg.max_len).batch(torch.from_numpy(batch_rows))
    set_dropout_generator(model, torch.Generator().manual_seed(args.seed))

    def loss_of_draw():
        return model.loss(model(batch), batch["label"]) + model.regularization_loss()

    losses, sums, squares = gradient_moments(model, args.draws, loss_of_draw)
    return model, losses, sums, squares


def fuxictr_moments(path: Path, init: Path, model) -> tuple[np.ndarray, dict, dict]:
    """The FuxiCTR side's file, renamed onto ctr_eval's parameters (the checked name map)."""
    saved = np.load(path)
    start = dict(np.load(init))
    out = []
    for part in ("sum", "sumsq"):
        full = {k: saved[f"{part}/{k}"] if f"{part}/{k}" in saved.files else np.zeros_like(v)
                for k, v in start.items()}  # buffers: zeros, only to satisfy the full-state map
        mapped = pair.fuxictr_state_for_ctr_eval(full, model)
        out.append({k: mapped[k].double().numpy() for k, _ in model.named_parameters()})
    return saved["losses"], out[0], out[1]


def compare(n: int, fx: tuple, ce: tuple) -> list[tuple[str, int, float, float]]:
    """Per parameter: (name, size, |mean difference|^2 / expected under one distribution,
    relative size of the difference to the mean gradient)."""
    rows = []
    for k in ce[0]:
        mean_fx, mean_ce = fx[0][k] / n, ce[0][k] / n
        var_fx = np.maximum(fx[1][k] / n - mean_fx ** 2, 0.0) * n / (n - 1)
        var_ce = np.maximum(ce[1][k] / n - mean_ce ** 2, 0.0) * n / (n - 1)
        expected = (var_fx.sum() + var_ce.sum()) / n
        dist = float(np.square(mean_fx - mean_ce).sum())
        ratio = dist / expected if expected > 0 else (0.0 if dist == 0 else float("inf"))
        scale = float(np.sqrt(np.square(mean_fx).sum()))
        rows.append((k, mean_fx.size, ratio, np.sqrt(dist) / scale if scale > 0 else 0.0))
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_data_args(p, scale="tiny")
    p.add_argument("--train-rows", type=int, default=0, help="first N train rows (0: all)")
    add_batch_size(p, 256)
    p.add_argument("--seed", type=int, default=1, help="FuxiCTR's initial weights and the batch")
    p.add_argument("--draws", type=int, default=200, help="dropout draws per side")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--attention-impl", choices=["exact", "plain"], default="exact",
                   help="ctr_eval's attention: its exact algebra (trained with) or FuxiCTR's formulation")
    p.add_argument("--attention-dropout", type=float, default=0.1, help="both sides (the challenge: 0.1)")
    p.add_argument("--fuxictr-venv", default=str(pair.DEFAULT_VENV))
    args = p.parse_args(argv)
    if args.draws < 2:
        p.error("--draws must be >= 2")
    split_dir = dataset_split(args)
    tag = f"{split_dir.parent.name}-train{args.train_rows or 'all'}-validall"
    bench_root = Path(args.cache_dir) / "runs" / tag
    counts = make_bench_root(split_dir, bench_root, args.train_rows, 0)
    python = pair.ensure_fuxictr_venv(Path(args.fuxictr_venv))
    logs = bench_root / "logs"
    logs.mkdir(exist_ok=True)
    init = logs / f"fuxictr_init_s{args.seed}.npz"
    with tempfile.TemporaryDirectory(prefix="fuxictr_moments_") as work:
        moments = Path(work) / "moments.npz"
        pair.run_child([str(python), str(pair.RUNNER), "--data-dir", str(bench_root), "--work-dir", work,
                        "--seed", str(args.seed), "--batch-size", str(args.batch_size),
                        "--threads", str(args.threads), "--init-out", str(init),
                        "--attention-dropout", repr(args.attention_dropout),
                        "--moments-out", str(moments), "--draws", str(args.draws)],
                       f"FuxiCTR seed {args.seed}, {args.draws} draws", logs / f"fuxictr_moments_s{args.seed}.log")
        from ctr_eval._runtime import global_batches

        # the seed's first training batch, as both trainers cut it
        batch_rows = global_batches(counts["train"], args.batch_size, args.seed, 0, 1, True)[0]
        log(f"ctr_eval seed {args.seed}, {args.draws} draws")
        model, ce_losses, *ce = ctr_eval_moments(bench_root, init, batch_rows, args)
        fx_losses, *fx = fuxictr_moments(moments, init, model)
    n = args.draws
    print(f"\nDIN gradient under dropout, one batch of {len(batch_rows)} rows ({counts['train']} train rows, "
          f"{counts['items']} items), FuxiCTR's initial weights of seed {args.seed}, {n} draws a side")
    se = np.sqrt(fx_losses.var(ddof=1) / n + ce_losses.var(ddof=1) / n)
    print(f"  training loss: FuxiCTR {fx_losses.mean():.6f} (sd {fx_losses.std(ddof=1):.6f}), ctr_eval "
          f"{ce_losses.mean():.6f} (sd {ce_losses.std(ddof=1):.6f}); difference "
          f"{ce_losses.mean() - fx_losses.mean():+.6f} = {(ce_losses.mean() - fx_losses.mean()) / se:+.2f} standard errors")
    rows = compare(n, fx, ce)
    width = max(len(r[0]) for r in rows)
    print(f"  {'parameter':<{width}}  {'size':>8}  {'dist^2 / expected':>17}  {'|diff| / |mean|':>15}")
    for name, size, ratio, rel in rows:
        print(f"  {name:<{width}}  {size:>8}  {ratio:>17.3f}  {rel:>15.4f}")
    ratios = [r[2] for r in rows if np.isfinite(r[2])]
    print(f"  ratio over tensors: median {np.median(ratios):.3f}, largest {max(r[2] for r in rows):.3f} "
          "(about 1 when both draw from one distribution)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
