"""Neighbour checks at MicroLens size: all 91,717 items of the synthetic `full` set.

    python bench/knn_full.py                       # generates `full` once (~5 min, ~1 GB)
    python bench/knn_full.py --root DIR --threads 2

Runs every check of :func:`mmembed.knn.neighbour_report` (cosine top-10 with FAISS: at
this size an inverted-file index, its recall against exact search reported; tag overlap,
co-click hit over the train histories, oracle neighbour overlap, collapse diagnostics, the
random floor) on the dataset's provided ``item_emb_d128`` plus the history proxy AUC on
the validation rows, and prints each figure with the time it took. Then, outside the
report's time, FAISS's exact search of all items against a plain torch matmul + topk over
the same normalised vectors (in blocks of rows), checking that both find the same
neighbours. Target: the whole report under 30 s on 2 cores.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

from benchlib import synthetic_root


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--root", default=None,
                   help="synthetic dataset root (default: `full`, seed 0, generated once under --cache-dir)")
    p.add_argument("--cache-dir", default=str(Path("runs") / "bench"), help="where the generated data is kept")
    p.add_argument("--k", type=int, default=10)
    p.add_argument("--threads", type=int, default=None, help="torch and FAISS threads")
    return p.parse_args(argv)


def torch_topk(vectors: np.ndarray, k: int, block: int = 4096) -> np.ndarray:
    """Exact cosine top-k by matmul + topk in row blocks (self excluded)."""
    import torch

    x = torch.from_numpy(vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12))
    out = []
    for start in range(0, len(x), block):
        scores = x[start:start + block] @ x.T
        rows = torch.arange(start, min(start + block, len(x)))
        scores[rows - start, rows] = -float("inf")
        out.append(scores.topk(k, dim=1).indices)
    return torch.cat(out).numpy()


def load(root: Path):
    import pyarrow.parquet as pq

    from ctr_eval.format import find_layout, read_item_info

    layout = find_layout(root)
    info = read_item_info(layout.item_info, ("item_tags", "item_emb_d128"))
    train_seq = pq.read_table(layout.item_seq, columns=["item_seq"]).column("item_seq")
    valid = pq.read_table(layout.valid, columns=["item_seq", "item_id", "label"])
    as_matrix = lambda col: np.stack(col.to_numpy(zero_copy_only=False)).astype(np.int64)  # noqa: E731
    return (info["item_emb_d128"][1:], info["item_tags"][1:], as_matrix(train_seq),
            np.load(root / "oracle" / "item_latent.npy")[1:], as_matrix(valid.column("item_seq")),
            valid.column("item_id").to_numpy(), valid.column("label").to_numpy())


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.threads:
        import faiss
        import torch

        torch.set_num_threads(args.threads)
        faiss.omp_set_num_threads(args.threads)
    from mmembed.knn import history_proxy_auc, neighbour_report, neighbours

    root = Path(args.root) if args.root else synthetic_root(args.cache_dir, "full", 0)
    if not (root / "oracle" / "item_latent.npy").is_file():
        raise SystemExit(f"{root}: no oracle/item_latent.npy; --root must be a synthetic dataset root")
    table, tags, histories, latent, valid_seq, valid_ids, labels = load(root)
    print(f"{len(table):,} items, {len(histories):,} user histories, {len(labels):,} valid rows")
    started = time.perf_counter()
    report = neighbour_report(table, tags=tags, histories=histories, truth=latent, k=args.k)
    proxy_started = time.perf_counter()
    proxy = history_proxy_auc(table, valid_seq, valid_ids, labels)
    total = time.perf_counter() - started
    for key, value in report.metrics.items():
        floor = report.floor.get(key)
        shown = f"{value:.4f}" if isinstance(value, float) else str(value)
        print(f"  {key:22s} {shown:>12}" + (f"   (random floor {floor:.4f})" if isinstance(floor, float) else ""))
    print(f"  {'history proxy AUC':22s} {proxy:12.4f}   ({time.perf_counter() - proxy_started:.2f} s)")
    print(f"whole report (table + random floor + truth neighbours + proxy): {total:.1f} s "
          f"(target < 30 s)")
    faiss_started = time.perf_counter()
    exact = neighbours(table, args.k, exact_limit=len(table))
    faiss_seconds = time.perf_counter() - faiss_started
    torch_started = time.perf_counter()
    plain = torch_topk(table.astype(np.float32), args.k)
    torch_seconds = time.perf_counter() - torch_started
    same = np.mean([len(set(a) & set(b)) / args.k for a, b in zip(exact.index.tolist(), plain.tolist())])
    print(f"top-{args.k} of {len(table):,} items: FAISS IndexFlatIP {faiss_seconds:.2f} s, torch matmul+topk "
          f"{torch_seconds:.2f} s (FAISS {torch_seconds / faiss_seconds:.2f}x faster); same neighbours: {same:.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
