"""``mmembed run RECIPE``, ``mmembed report RUN_DIR`` and ``mmembed knn``: comparing
embedding strategies on the command line."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

EXAMPLE = """example:
  mmembed run recipes/demo.yaml
  mmembed run recipes/compare_fusions.yaml --set seeds=[1,2,3] --set data.synthetic=tiny
  mmembed run my.yaml --out runs/mine        # rerun: computes only what is missing
  mmembed run recipes/task2_toolbox.yaml --models din,din+codes   # part of a recipe's models
"""

REPORT_EXAMPLE = """example:
  mmembed report runs/demo                   # -> runs/demo/report/index.html and summary.md
  mmembed report runs/demo --out /tmp/demo-report
"""


def _subcommand(sub: Any, common: argparse.ArgumentParser, name: str, summary: str, description: str,
                example: str) -> argparse.ArgumentParser:
    return sub.add_parser(name, parents=[common], help=summary, description=description, epilog=example,
                          formatter_class=argparse.RawDescriptionHelpFormatter)


def add_run_parser(sub: Any, common: argparse.ArgumentParser) -> None:
    """Register ``run`` and ``report`` on the ``mmembed`` subparsers."""
    p = _subcommand(sub, common, "run", "run a recipe: compare embedding strategies side by side",
                    "Run every (embedding, CTR model, seed) a recipe asks for, each step cached, and "
                    "write metrics, a summary and the report (report/index.html) into the run folder.",
                    EXAMPLE)
    p.add_argument("recipe", help="a recipe YAML file (see recipes/)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY.PATH=VALUE",
                   help="override a recipe value, repeatable (e.g. seeds=[1,2], models.0.max_epochs=1)")
    p.add_argument("--models", metavar="LABEL,...",
                   help="run only these CTR models of the recipe (their labels, comma-separated); a "
                        "later run of the whole recipe in the same folder reuses their runs")
    p.add_argument("--out", help="run folder (default runs/<recipe name>)")
    p.add_argument("--cache-dir", help="synthetic data and feature cache (default: <run folder>/../.cache)")
    p.set_defaults(func=cmd_run)
    add_report_parser(sub, common)
    add_knn_parser(sub, common)


def add_report_parser(sub: Any, common: argparse.ArgumentParser) -> None:
    p = _subcommand(sub, common, "report", "write the HTML and Markdown report of a recipe run",
                    "Write RUN_DIR/report/index.html (figures and cover thumbnails as PNG files beside "
                    "it) and summary.md from what a recipe run saved; `mmembed run` writes it at its "
                    "end too.", REPORT_EXAMPLE)
    p.add_argument("run_dir", help="a run folder written by `mmembed run`")
    p.add_argument("--out", help="report folder (default RUN_DIR/report)")
    p.set_defaults(func=cmd_report)


def cmd_run(args: argparse.Namespace) -> int:
    from mmembed.recipes import load_recipe

    models = [m.strip() for m in args.models.split(",") if m.strip()] if args.models else None
    recipe = load_recipe(args.recipe, args.overrides, models=models)
    run_dir = Path(args.out) if args.out else Path("runs") / recipe.name
    run_and_report(recipe, run_dir, cache_dir=args.cache_dir, progress=not args.quiet)
    return 0


def run_and_report(recipe: Any, run_dir: Path, cache_dir: str | None = None, progress: bool = True) -> list[dict]:
    """Run a recipe, print its table, write the report; the records."""
    from mmembed.recipes import run_recipe
    from mmembed.recipes.report import write_report
    from mmembed.recipes.results import format_summary

    print(f"recipe {recipe.name}: {len(recipe.embeddings)} embedding(s) x {len(recipe.models)} model(s) "
          f"x {len(recipe.seeds)} seed(s) -> {run_dir}")
    records = run_recipe(recipe, run_dir, cache_dir=cache_dir, progress=progress)
    print()
    print(format_summary(records))
    print(f"\nresults: {run_dir / 'summary.md'}, {run_dir / 'metrics.csv'}")
    print(f"report: {write_report(run_dir)}")
    return records


def cmd_report(args: argparse.Namespace) -> int:
    from mmembed.recipes.report import load_run, write_report

    out = Path(args.out) if args.out else Path(args.run_dir) / "report"
    try:
        index = write_report(args.run_dir, args.out)
    except PermissionError:
        raise PermissionError(f"cannot write the report into {out}: permission denied; pass another --out "
                              "or fix the folder's permissions") from None
    unfinished = load_run(args.run_dir).unfinished
    if unfinished:
        print(f"mmembed report: warning: {unfinished}", file=sys.stderr)
    print(f"report: {index}")
    return 0


KNN_EXAMPLE = """example:
  mmembed knn DATA                              # the dataset's own item_emb_d128
  mmembed knn DATA --item-info my/item_info.parquet
"""


def add_knn_parser(sub: Any, common: argparse.ArgumentParser) -> None:
    p = _subcommand(sub, common, "knn", "neighbour checks and the history proxy AUC of an embedding table",
                    "Cosine top-k neighbours of every item with FAISS (exact, or approximate with its "
                    "recall beyond 20,000 items): tag overlap, co-click hit (train histories), overlap "
                    "with the true neighbours (synthetic data), collapse diagnostics, each beside a "
                    "random table's floor, and the history proxy AUC on the validation rows.", KNN_EXAMPLE)
    p.add_argument("data_dir", help="dataset root (holding MicroLens_1M_x1/) or that folder itself")
    p.add_argument("--item-info", help="an item_info.parquet whose item_emb_d128 to check, or an (N+1, d) "
                                       ".npy array (default: the dataset's own)")
    p.set_defaults(func=cmd_knn)


#: metrics read off the neighbour lists: ties, so meaningless, on a collapsed table
NEIGHBOUR_METRICS = ("tag_overlap", "coclick_hit", "truth_overlap")


def _read_table(path: str) -> Any:
    """An item table to check: item_info.parquet's item_emb_d128, or an (N+1, d) .npy array."""
    import numpy as np

    from ctr_eval.format import read_item_info

    suffix = Path(path).suffix.lower()
    if suffix == ".parquet":
        return read_item_info(path, ("item_emb_d128",))["item_emb_d128"]
    if suffix == ".npy":
        table = np.load(path, allow_pickle=False)
        if table.ndim != 2:
            raise ValueError(f"--item-info {path}: expected an (N+1, d) array, got shape {table.shape}")
        return table
    raise ValueError(f"--item-info {path}: reads an item_info.parquet (its item_emb_d128 column) or an "
                     "(N+1, d) .npy array (row i = item i, row 0 = padding)")


def cmd_knn(args: argparse.Namespace) -> int:
    from mmembed.knn import collapse_verdict
    from mmembed.recipes.checks import knn_report, proxy_auc
    from mmembed.recipes.tables import load_truth

    truth = load_truth(args.data_dir)
    table = truth.provided if args.item_info is None else _read_table(args.item_info)
    if len(table) != len(truth.provided):
        raise ValueError(f"--item-info {args.item_info} has {len(table)} rows; the dataset has {len(truth.provided)} "
                         "(N+1: row i = item i, row 0 = padding)")
    report = knn_report(args.data_dir, table, truth)
    print(f"{len(table) - 1:,} items, top-{report.metrics['k']} cosine neighbours by {report.metrics['method']} "
          f"in {report.metrics['seconds']:.2f} s" + (f" (recall {report.metrics['recall']:.3f})"
                                                     if report.metrics["recall"] is not None else ""))
    collapsed = collapse_verdict(report.metrics)
    if collapsed:
        print(f"  {collapsed}")
    for key, value in report.metrics.items():
        if key in ("k", "method", "seconds", "recall") or (collapsed and key in NEIGHBOUR_METRICS):
            continue
        print(f"  {key:22s} {value:10.4f}   (random table {report.floor[key]:.4f})")
    print(f"  {'history proxy AUC':22s} {proxy_auc(args.data_dir, table):10.4f}")
    return 0
