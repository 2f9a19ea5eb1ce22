"""TransAct+DCNv2 (Task 2) with the correct padding mask and with the published one.

    python bench/transact_masks.py                      # synthetic `small`, published widths
    python bench/transact_masks.py --train-rows 40000 --epochs 2
    python bench/transact_masks.py --first-k-cols 2     # narrower DCN input (labelled)

Trains ``ctr_eval``'s ``transact_dcn`` twice on the same files, same seed and settings,
once with ``published_mask=False`` (padding masked, as intended) and once with
``published_mask=True`` (the 1st-place code's mask: attention sees only padding and the
real history is zeroed), and prints validation AUC and logloss per epoch, the best of
each, training samples/s and the parameter count. Data: ``--data-dir`` or the synthetic
``--scale`` (generated once into ``--cache-dir``), cut to the first ``--train-rows`` /
``--valid-rows`` rows (0 = all) as bench/din_vs_fuxictr.py does.

The published widths make a wide model: the DCN input is likes + views + target (384) +
(first_k_cols + 1) x 512 transformer outputs, 9,088 wide at k = 16, so the three full-rank
cross layers hold ~248M weights; on a CPU that is slow (see bench/README.md). Any setting
changed from the published config is printed with the figures.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

from benchlib import add_batch_size, add_data_args, dataset_split, make_bench_root


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_data_args(p)
    p.add_argument("--train-rows", type=int, default=0, help="first N train rows (0: all)")
    p.add_argument("--valid-rows", type=int, default=0, help="first N valid rows (0: all)")
    p.add_argument("--epochs", type=int, default=2, help="epoch cap (early stopping may end sooner)")
    p.add_argument("--first-k-cols", type=int, default=None,
                   help="transformer outputs flattened (published: 16)")
    add_batch_size(p, None, help="rows per step (default: the recipe's; published: 128)")
    p.add_argument("--learning-rate", type=float, default=None, help="published: 5e-4")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: all cores)")
    p.add_argument("--device", default=None, choices=[None, "cpu", "cuda"])
    p.add_argument("--json-out", default=None, help="also write the figures to this JSON file")
    p.add_argument("--run-dir", default=None,
                   help="keep each mask's run here (<dir>/correct, <dir>/published) so a killed "
                        "bench resumes from the last finished epoch (default: temporary folders)")
    p.add_argument("--progress", action="store_true", help="show progress bars on stderr")
    args = p.parse_args(argv)
    if args.epochs < 1 or min(args.train_rows, args.valid_rows) < 0:
        p.error("--epochs must be >= 1 and --train-rows/--valid-rows >= 0")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    import torch

    import ctr_eval
    from ctr_eval.config import resolve_config

    split_dir = dataset_split(args)
    tag = f"{split_dir.parent.name}-train{args.train_rows or 'all'}-valid{args.valid_rows or 'all'}"
    root = Path(args.cache_dir) / "runs" / tag
    counts = make_bench_root(split_dir, root, args.train_rows, args.valid_rows)
    changed = {k: v for k, v in (("first_k_cols", args.first_k_cols), ("batch_size", args.batch_size),
                                 ("learning_rate", args.learning_rate)) if v is not None}
    results = {}
    for published in (False, True):
        cfg = resolve_config("transact_dcn", published_mask=published, **changed)
        label = "published mask" if published else "correct mask"
        print(f"[transact_masks {time.strftime('%H:%M:%S')}] {label}: {counts['train']} train rows, "
              f"up to {args.epochs} epochs", file=sys.stderr, flush=True)
        run = dict(model="transact_dcn", max_epochs=args.epochs, progress=args.progress,
                   device=args.device, num_threads=args.threads, published_mask=published, **changed)
        if args.run_dir:
            result = ctr_eval.evaluate(root, run_dir=Path(args.run_dir) / label.split()[0], **run)
        else:
            with tempfile.TemporaryDirectory(prefix="transact_masks_") as run_dir:
                result = ctr_eval.evaluate(root, run_dir=run_dir, **run)
        results[label] = result
        result["parameters"] = _parameter_count(cfg, root)
        print(f"[transact_masks {time.strftime('%H:%M:%S')}] {label}: best valid AUC "
              f"{result['valid_auc']:.4f}", file=sys.stderr, flush=True)
    print(f"\nTransAct+DCNv2, {counts['train']} train / {counts['valid']} valid rows, {counts['items']} "
          f"items, history {counts['history_len']}; settings changed from the published config: "
          f"{changed or 'none'}; torch threads {args.threads or torch.get_num_threads()}")
    width = max(len(k) for k in results)
    for label, r in results.items():
        epochs = " ".join(f"{h['valid_auc']:.4f}" for h in r["history"])
        print(f"  {label:<{width}}  best valid AUC {r['valid_auc']:.4f} (epoch {r['best_epoch']}), "
              f"logloss {r['valid_logloss']:.4f}, {r['train_samples_per_s']:.0f} train samples/s, "
              f"{r['parameters'] / 1e6:.1f}M parameters; AUC per epoch: {epochs}")
    diff = results["correct mask"]["valid_auc"] - results["published mask"]["valid_auc"]
    print(f"  correct - published: {diff:+.4f} AUC")
    if args.json_out:
        Path(args.json_out).write_text(json.dumps({"data": counts, "changed": changed, "results": results,
                                                   "auc_gain": diff}, indent=2, default=str))
    return 0


def _parameter_count(cfg, root: Path) -> int:
    from ctr_eval.data import load_item_table
    from ctr_eval.models import build_model

    model = build_model("transact_dcn", cfg, load_item_table(root))
    return sum(p.numel() for p in model.parameters())


if __name__ == "__main__":
    sys.exit(main())
