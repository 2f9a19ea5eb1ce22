"""What each fusion-table row's item table holds of the synthetic truth (ridge probe).

    python bench/fusion_probe.py                        # every row of compare_fusions, seed 1
    python bench/fusion_probe.py --rows contrastive,gated --seed 2
    python bench/fusion_probe.py --recipe recipes/other.yaml --run-dir runs/other
    python bench/fusion_probe.py --print-only           # the table from the results file
    python bench/fusion_probe.py --recipe recipes/fusion_levers.yaml --rows gated,contrastive+gated,behaviour_svd

Two kinds of row exist only here. ``a+b`` combines two rows' tables (or more: ``a+b+c``)
as ``concat_pca`` does (each L2-normalised, concatenated, PCA to 128): the "combine
heads" lever, screened without a fit. ``behaviour_svd`` (also as a part of ``a+b``) is
what behaviour alone holds: the item vectors of a truncated SVD (64 dims) of the positive
PMI of train-history co-clicks (items at most 8 positions apart; context counts smoothed
by the power 0.75), no content at all.

The fusion table (``mmembed run recipes/compare_fusions.yaml``) says how far each table
gets under the fixed DIN; this says why. For each of the recipe's rows it takes the
(N+1, 128) table the recipe judged (``tables/<row>-seed<k>.npz`` in the recipe's run
folder; a row not built yet is built exactly as the recipe builds it, fitting the head
unless ``--no-fit``) and fits a ridge regression from the table to each block of the generator's latent item vectors
(``oracle/latent_layout.json``: text_only, shared, image_only, collab), exactly as
bench/encoder_probe.py does for raw features: standardised columns, penalty by
leave-one-out on the training part. Training part: a seeded random 80% of the items;
held-out R^2 over the other 20%, on all of them and separately on the items seen at
least 5 times as a train target ("frequent") and fewer ("rare", the fusion table's
split). The collab block shows in no content, so only behaviour (a head's residual) can
put it into a table; a content-only head's ceiling there is 0.

A probe asks what a table *holds*, not how it is laid out; the DIN compares items through
their vectors, so the second column is about layout: the history-cosine AUC of
bench/history_proxy.py (cosine of a validation row's mean history vector and its
target's vector, scored against the label), which needs no training.

Results are kept in ``--results-file`` (default bench/results/fusion_probe.json, written
atomically after each row), so the table fills over several sittings.
"""
from __future__ import annotations

import argparse
import functools
import json
import sys
from pathlib import Path

import numpy as np

from benchlib import ResultsFile, logger
from encoder_probe import r2_score, ridge_predict

DEFAULT_RESULTS = Path(__file__).resolve().parent / "results" / "fusion_probe.json"
DEFAULT_RECIPE = Path(__file__).resolve().parent.parent / "recipes" / "compare_fusions.yaml"
TRAIN_FRACTION = 0.8
BEHAVIOUR_ROW = "behaviour_svd"
SVD_DIM, SVD_WINDOW, SVD_CONTEXT_POWER = 64, 8, 0.75


log = logger("fusion_probe")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--recipe", default=str(DEFAULT_RECIPE), help="the recipe whose rows are probed")
    p.add_argument("--run-dir", default=None, help="its run folder (default runs/<recipe name>)")
    p.add_argument("--results-file", default=str(DEFAULT_RESULTS))
    p.add_argument("--rows", default=None, help="comma-separated rows (default: all of the recipe's)")
    p.add_argument("--seed", type=int, default=1, help="which seed's table (default 1)")
    p.add_argument("--no-fit", action="store_true",
                   help="skip head rows whose table is not built yet (reference rows are always built)")
    p.add_argument("--print-only", action="store_true", help="print the table, run nothing")
    args = p.parse_args(argv)
    from mmembed.recipes import load_recipe

    args.recipe = load_recipe(args.recipe)
    names = [e.name for e in args.recipe.embeddings]
    args.rows = names if args.rows is None else [r for r in args.rows.split(",") if r]
    unknown = [r for r in args.rows if any(part not in names + [BEHAVIOUR_ROW] for part in r.split("+"))]
    if unknown:
        p.error(f"rows {unknown} are not in {args.recipe.source}; its rows: {', '.join(names)} "
                f"(or several joined by '+', or {BEHAVIOUR_ROW})")
    args.run_dir = Path(args.run_dir or Path("runs") / args.recipe.name)
    args.results_file = Path(args.results_file)
    return args


def probe_table(table: np.ndarray, latent: np.ndarray, blocks: dict[str, tuple[int, int]],
                frequent: np.ndarray, seed: int = 0) -> dict[str, dict[str, float]]:
    """{block: {"all"|"frequent"|"rare": held-out R^2}} of a ridge probe from ``table``
    (rows 1..N) to each latent block; ``frequent`` marks rows 1..N."""
    items = np.arange(1, len(table))
    order = np.random.default_rng(seed).permutation(items)
    x, y, freq = table[order].astype(np.float64), latent[order].astype(np.float64), frequent[order - 1]
    cut = int(TRAIN_FRACTION * len(order))
    out: dict[str, dict[str, float]] = {}
    for name, (lo, hi) in blocks.items():
        pred, _ = ridge_predict(x, y[:, lo:hi], cut)
        truth = y[cut:, lo:hi]
        out[name] = {part: r2_score(pred[m], truth[m]) if m.sum() > 1 else float("nan")
                     for part, m in (("all", np.ones(len(truth), bool)), ("frequent", freq[cut:]),
                                     ("rare", ~freq[cut:]))}
    return out


def combined_table(names: list[str], tables: list[np.ndarray]) -> np.ndarray:
    """(N+1, 128) table: ``concat_pca`` over the given (N+1, d) tables' item rows."""
    from mmembed.fusion import get_fusion

    head = get_fusion("concat_pca")(dim=128)
    fused = head.fit_transform({name: t[1:] for name, t in zip(names, tables)})
    return np.vstack([np.zeros((1, fused.shape[1]), fused.dtype), fused])


@functools.lru_cache(maxsize=1)
def behaviour_svd(root: Path) -> np.ndarray:
    """(N+1, SVD_DIM) item vectors from train-history co-clicks alone (module docstring)."""
    import scipy.sparse as sparse
    from scipy.sparse.linalg import svds

    from mmembed.api import history_rows
    from mmembed.datasets import ItemCatalog
    from mmembed.datasets.histories import load_train_histories

    catalog = ItemCatalog.from_dir(root, images=None)
    n_items = len(catalog.item_ids)
    rows = history_rows(load_train_histories(root).item_seq, catalog.item_ids).astype(np.int64)
    pairs = [(rows[:, :-d].ravel(), rows[:, d:].ravel()) for d in range(1, SVD_WINDOW + 1)]
    left = np.concatenate([a[(a > 0) & (b > 0) & (a != b)] for a, b in pairs]) - 1
    right = np.concatenate([b[(a > 0) & (b > 0) & (a != b)] for a, b in pairs]) - 1
    counts = sparse.coo_matrix((np.ones(len(left)), (left, right)), shape=(n_items, n_items)).tocsr()
    counts = (counts + counts.T).tocoo()
    total = counts.data.sum()
    item_freq = np.asarray(counts.sum(axis=1)).ravel()
    context = item_freq ** SVD_CONTEXT_POWER
    pmi = (np.log(counts.data / total) - np.log(item_freq[counts.row] / total)
           - np.log(context[counts.col] / context.sum()))
    ppmi = sparse.csr_matrix((np.maximum(pmi, 0.0), (counts.row, counts.col)), shape=counts.shape)
    u, s, _ = svds(ppmi, k=SVD_DIM, random_state=0)
    return np.vstack([np.zeros((1, SVD_DIM)), u * np.sqrt(s)])


def run_missing(args: argparse.Namespace) -> dict:
    from mmembed.recipes.checks import proxy_auc
    from mmembed.recipes.tables import RARE_BELOW, load_truth

    from mmembed.recipes.runner import RunContext, build_table, prepare_data

    store = ResultsFile(args.results_file)
    results = store.read()
    ctx = RunContext(args.recipe, args.run_dir, args.run_dir.parent / ".cache", say=log)
    args.run_dir.mkdir(parents=True, exist_ok=True)
    prepare_data(ctx)
    root = ctx.root
    truth = load_truth(root)
    layout = json.loads((root / "oracle" / "latent_layout.json").read_text())
    blocks = {name: (int(lo), int(hi)) for name, (lo, hi) in layout["blocks"].items()}
    frequent = truth.train_target_counts[1:] >= RARE_BELOW
    specs = {e.name: e for e in args.recipe.embeddings}

    def recipe_table(row: str) -> np.ndarray | None:
        if row == BEHAVIOUR_ROW:
            return behaviour_svd(root)
        spec = specs[row]
        stored = args.run_dir / "tables" / f"{row}-seed{args.seed}.npz"
        if args.no_fit and not spec.is_reference and not stored.is_file():
            log(f"{row}: no table built yet for seed {args.seed}, skipped (--no-fit)")
            return None
        table, _ = build_table(ctx, spec, args.seed, truth)  # the recipe's own, when built
        return np.asarray(truth.provided if table is None else table)

    for row in args.rows:
        key = f"{args.recipe.name}/{row}|{args.seed}"
        if key in results:
            continue
        parts = [recipe_table(part) for part in row.split("+")]
        if any(t is None for t in parts):
            continue
        table = parts[0] if len(parts) == 1 else combined_table(row.split("+"), parts)
        results[key] = {"row": row, "seed": args.seed, "recipe": args.recipe.name,
                        "frequent_items": int(frequent.sum()),
                        "r2": probe_table(table, truth.latent, blocks, frequent),
                        "history_cosine_auc": proxy_auc(root, np.asarray(table))}
        store.put(key, results[key])
        log(f"{row}: probed")
    return results


def format_table(results: dict, recipe: str, rows: list[str], seed: int) -> str:
    """Held-out R^2 per block, as all / frequent / rare items."""
    recs = [results[f"{recipe}/{r}|{seed}"] for r in rows if f"{recipe}/{r}|{seed}" in results]
    if not recs:
        return "(no results)"
    blocks = list(recs[0]["r2"])
    lines = ["| row | history-cosine AUC | " + " | ".join(blocks) + " |", "| --- | --- |" + " --- |" * len(blocks)]
    for rec in recs:
        cells = [" / ".join(f"{rec['r2'][b][p]:.2f}" for p in ("all", "frequent", "rare")) for b in blocks]
        proxy = f"{rec['history_cosine_auc']:.3f}" if "history_cosine_auc" in rec else "-"
        lines.append(f"| {rec['row']} | {proxy} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    results = ResultsFile(args.results_file).read() if args.print_only else run_missing(args)
    print(f"Seed {args.seed}'s table per row: history-cosine AUC on valid rows; held-out R^2 of each "
          "latent block, all / frequent / rare items:\n")
    print(format_table(results, args.recipe.name, args.rows, args.seed))
    return 0


if __name__ == "__main__":
    sys.exit(main())
