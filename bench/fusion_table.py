"""The fusion table: item embeddings under the challenge's fixed DIN, side by side.

    python bench/fusion_table.py                          # every row, seeds 1,2,3, synthetic small
    python bench/fusion_table.py --rows random,provided,oracle --seeds 1
    python bench/fusion_table.py --print-only             # the table from the results file

One protocol for every row: synthetic ``small`` (generator seed 0), the fixed DIN with every
field at its Task 1 value except ``batch_size`` 2048 (a Task 1 tunable) and the training
``seed``, at most ``--epochs`` 4 epochs with FuxiCTR's early stopping. Task 1 mode locks
the seed, so the runs use ``task1=False`` and the bench checks that the config differs
from Task 1's only there. A head with a ``seed`` parameter is fitted with the same seed.

Per row and seed: validation AUC; AUC on the test rows against the generator's labels
(``oracle/test_labels.npy``); the same on test rows whose target item occurs fewer than 5
times as a train target ("rare"); the head's fitting time (an extract with the features already cached: reading them, fitting,
transforming). The table gives each as mean
+- sd over the seeds and "gap closed" = (AUC - AUC_random) / (AUC_oracle - AUC_random) on
mean validation AUCs.

Rows: ``random`` (Gaussian table), ``provided`` (the dataset's item_emb_d128), ``oracle``
(the true latent vectors, randomly projected to 128), ``content_oracle`` (the same with
the ``collab`` block zeroed: the ceiling for heads that see content only), ``pca:<enc>``
(one encoder, PCA to 128), and each fusion head over ``--encoders``.

Finished runs are kept in ``--results-file`` (rewritten atomically after each run) and the
DIN run folders under ``--work-dir``, so a killed bench resumes where it stopped and the
table can be filled over several sittings.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

import numpy as np

DEFAULT_WORK = Path("runs") / "bench" / "fusion_table"
REFERENCE_ROWS = ("random", "provided", "oracle", "content_oracle")
DEFAULT_ENCODERS = ("sbert", "pixels")
DEFAULT_HEADS = ("concat_pca", "modality_pca", "gated", "contrastive")
RARE_BELOW = 5  # a target item seen fewer times than this as a train target is "rare"


def log(message: str) -> None:
    print(f"[fusion_table {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--root", default=None, help="synthetic dataset root (default: small, seed 0, "
                                                 "generated into --work-dir once)")
    p.add_argument("--work-dir", default=str(DEFAULT_WORK), help="data, caches and DIN run folders")
    p.add_argument("--results-file", default=None, help="default: <work-dir>/results.json")
    p.add_argument("--rows", default=None, help="comma-separated rows (default: all)")
    p.add_argument("--encoders", default=",".join(DEFAULT_ENCODERS),
                   help="encoders for the pca:<enc> rows and the fusion heads")
    p.add_argument("--heads", default=",".join(DEFAULT_HEADS), help="fusion heads to compare")
    p.add_argument("--seeds", default="1,2,3")
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--batch-size", type=int, default=2048)
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--print-only", action="store_true", help="print the table, run nothing")
    args = p.parse_args(argv)
    args.seeds = [int(s) for s in args.seeds.split(",") if s]
    args.encoders = [e for e in args.encoders.split(",") if e]
    all_rows = [*REFERENCE_ROWS, *(f"pca:{e}" for e in args.encoders),
                *(h for h in args.heads.split(",") if h)]
    args.rows = all_rows if args.rows is None else [r for r in args.rows.split(",") if r]
    unknown = [r for r in args.rows if r not in all_rows]
    if unknown:
        p.error(f"unknown row(s) {unknown}; valid: {all_rows}")
    args.work_dir = Path(args.work_dir)
    args.results_file = Path(args.results_file or args.work_dir / "results.json")
    return args


# --------------------------------------------------------------------------- data


def ensure_root(args: argparse.Namespace) -> Path:
    if args.root:
        return Path(args.root)
    root = args.work_dir / "synthetic-small-seed0"
    if not (root / "oracle" / "test_labels.npy").is_file():
        from mmembed.datasets.synthetic import generate

        log(f"generating synthetic small (seed 0) into {root}")
        generate(root, scale="small", seed=0, progress=True, overwrite=True)
    return root


@dataclasses.dataclass
class Truth:
    """What scoring needs besides the model: test labels and which test rows are rare."""

    test_labels: np.ndarray
    rare_test: np.ndarray  # bool per test row
    provided: np.ndarray  # (N+1, 128) the dataset's item_emb_d128
    latent: np.ndarray  # (N+1, 32) oracle item vectors
    collab: slice  # the collab block's dims in latent


def load_truth(root: Path) -> Truth:
    import pyarrow.parquet as pq

    from ctr_eval.format import find_layout, read_item_info

    layout = find_layout(root)
    train_targets = pq.read_table(layout.train, columns=["item_id"]).column("item_id").to_numpy()
    test_targets = pq.read_table(layout.test, columns=["item_id"]).column("item_id").to_numpy()
    counts = np.bincount(train_targets, minlength=int(test_targets.max()) + 1)
    start, stop = json.loads((root / "oracle" / "latent_layout.json").read_text())["blocks"]["collab"]
    return Truth(
        test_labels=np.load(root / "oracle" / "test_labels.npy"),
        rare_test=counts[test_targets] < RARE_BELOW,
        provided=read_item_info(layout.item_info, ("item_emb_d128",))["item_emb_d128"],
        latent=np.load(root / "oracle" / "item_latent.npy").astype(np.float32),
        collab=slice(start, stop),
    )


# --------------------------------------------------------------------------- tables


def _projected(latent: np.ndarray, seed: int) -> np.ndarray:
    rng = np.random.default_rng([seed, 128])
    table = latent @ (rng.standard_normal((latent.shape[1], 128)) / np.sqrt(latent.shape[1]))
    table[0] = 0
    return table.astype(np.float32)


def reference_table(row: str, truth: Truth, seed: int) -> np.ndarray | None:
    """The (N+1, 128) table of a reference row; None = the dataset's own item_info."""
    if row == "provided":
        return None
    if row == "random":
        rng = np.random.default_rng([seed, 7])
        table = rng.standard_normal(truth.provided.shape) * truth.provided[1:].std()
        table[0] = 0
        return table.astype(np.float32)
    latent = truth.latent.copy()
    if row == "content_oracle":
        latent[:, truth.collab] = 0
    return _projected(latent, seed)


def head_table(row: str, root: Path, args: argparse.Namespace, seed: int) -> tuple[np.ndarray, float]:
    """(N+1, 128) table of an extracted embedding and the seconds its fusion took."""
    import mmembed
    from mmembed.fusion import FUSIONS

    if row.startswith("pca:"):
        encoders, spec = [row[4:]], {"name": "concat_pca"}
    else:
        encoders, spec = list(args.encoders), {"name": row}
        if "seed" in FUSIONS.get(row)._param_names():
            spec["seed"] = seed
    cache = args.work_dir / "feature_cache"
    mmembed.extract(root, encoders=encoders, fusion=None, dim=None, cache_dir=cache, progress=True)  # warm
    started = time.perf_counter()  # from here the features come from the cache
    emb = mmembed.extract(root, encoders=encoders, fusion=spec, dim=128, cache_dir=cache, progress=False)
    seconds = time.perf_counter() - started
    table = np.zeros((int(emb.ids.max()) + 1, 128), dtype=np.float32)
    table[emb.ids] = emb.vectors
    return table, seconds


# --------------------------------------------------------------------------- runs


def din_run(root: Path, table: np.ndarray | None, run_dir: Path, args: argparse.Namespace,
            seed: int, truth: Truth) -> dict:
    import ctr_eval
    from ctr_eval.config import resolve_config
    from ctr_eval.submission import read_submission

    overrides = {"batch_size": args.batch_size, "seed": seed}
    task1 = dataclasses.asdict(resolve_config("din", batch_size=args.batch_size))
    differs = {k for k, v in dataclasses.asdict(resolve_config("din", task1=False, **overrides)).items()
               if task1[k] != v}
    assert differs <= {"seed"}, differs
    result = ctr_eval.evaluate(root, item_info=table, task1=False, run_dir=run_dir,
                               max_epochs=args.epochs, progress=False, num_threads=args.threads,
                               **overrides)
    zip_path = ctr_eval.predict(run_dir, root, out_dir=run_dir / "test", split="test", progress=False)
    _, scores = read_submission(zip_path)
    labels, rare = truth.test_labels, truth.rare_test
    return {"valid_auc": result["valid_auc"], "valid_logloss": result["valid_logloss"],
            "test_auc": ctr_eval.auc(labels, scores),
            "rare_test_auc": ctr_eval.auc(labels[rare], scores[rare]), "rare_test_rows": int(rare.sum()),
            "epochs_run": result["epochs_run"], "train_seconds": sum(h["train_seconds"] for h in result["history"])}


def load_results(path: Path) -> dict:
    return json.loads(path.read_text()) if path.is_file() else {}


def run_missing(args: argparse.Namespace) -> dict:
    from ctr_eval.format import write_json

    results = load_results(args.results_file)
    root = ensure_root(args)
    truth = load_truth(root)
    for row in args.rows:
        for seed in args.seeds:
            key = f"{row}|{seed}"
            if key in results:
                continue
            log(f"{row}, seed {seed}: building the table")
            if row in REFERENCE_ROWS:
                table, fit_seconds = reference_table(row, truth, seed), 0.0
            else:
                table, fit_seconds = head_table(row, root, args, seed)
            log(f"{row}, seed {seed}: training the DIN (fit took {fit_seconds:.1f} s)")
            run_dir = args.work_dir / "runs" / row.replace(":", "_") / f"seed{seed}"
            record = din_run(root, table, run_dir, args, seed, truth)
            results[key] = {"row": row, "seed": seed, "fit_seconds": fit_seconds, **record,
                            "epochs_cap": args.epochs, "batch_size": args.batch_size}
            write_json(args.results_file, results)
            log(f"{row}, seed {seed}: valid AUC {record['valid_auc']:.4f}, test AUC {record['test_auc']:.4f}")
    return results


# --------------------------------------------------------------------------- table


def _stat(values: list[float]) -> str:
    if not values:
        return "-"
    if len(values) == 1:
        return f"{values[0]:.4f}"
    return f"{np.mean(values):.4f} +- {np.std(values, ddof=1):.4f}"


def format_table(results: dict, rows: list[str]) -> str:
    by_row: dict[str, list[dict]] = {}
    for record in results.values():
        by_row.setdefault(record["row"], []).append(record)
    mean = {r: float(np.mean([x["valid_auc"] for x in recs])) for r, recs in by_row.items()}
    low, high = mean.get("random"), mean.get("oracle")
    lines = ["| row | seeds | valid AUC | gap closed | test AUC (oracle labels) | rare-item test AUC | fit s |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for row in [r for r in rows if r in by_row] + sorted(set(by_row) - set(rows)):
        recs = sorted(by_row[row], key=lambda x: x["seed"])
        gap = "-" if low is None or high is None or high == low else f"{(mean[row] - low) / (high - low):.0%}"
        lines.append(
            f"| {row} | {','.join(str(x['seed']) for x in recs)} | {_stat([x['valid_auc'] for x in recs])} "
            f"| {gap} | {_stat([x['test_auc'] for x in recs])} | {_stat([x['rare_test_auc'] for x in recs])} "
            f"| {np.mean([x['fit_seconds'] for x in recs]):.1f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    results = load_results(args.results_file) if args.print_only else run_missing(args)
    print(format_table(results, args.rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
