"""History proxy AUC of fusion heads: a fast stand-in for the DIN judge while tuning.

Each validation row is scored by cosine(mean of its history items' vectors, the target's
vector); the AUC of that score against the label is the proxy (seconds, where a DIN
training takes minutes). Heads are fitted on the dataset's train histories exactly as
``mmembed.extract`` fits them; validation rows are read only to score.

    python bench/history_proxy.py DATA --encoders sbert pixels \\
        --head concat_pca --head contrastive --head '{"name": "contrastive", "residual": true}'

Also prints the proxy of the oracle latent vectors (synthetic data: DATA/oracle/) and of a
random table, for reference.
"""
from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

import numpy as np

from mmembed.api import _head_sequences, build_head, parse_spec
from mmembed.cache import encode_cached
from mmembed.datasets import ItemCatalog
from mmembed.encoders import create_encoder
from mmembed.recipes.checks import proxy_auc


def history_proxy_auc(vectors: np.ndarray, item_ids: np.ndarray, data: str | Path) -> float:
    """The recipes' proxy AUC (``mmembed.recipes.checks.proxy_auc``) of ``vectors``, row i
    being item ``item_ids[i]``."""
    table = np.zeros((int(item_ids.max()) + 1, vectors.shape[1]), np.float32)
    table[item_ids] = vectors
    return proxy_auc(Path(data), table)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("data")
    parser.add_argument("--encoders", nargs="+", default=["sbert", "pixels"])
    parser.add_argument("--head", action="append", default=[], help="fusion spec (repeatable)")
    parser.add_argument("--cache-dir", default=None)
    parser.add_argument("--save", default=None, help="folder to save each head's vectors (.npy)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)

    catalog = ItemCatalog.from_dir(args.data, progress=False)
    ids = np.asarray(catalog.item_ids, np.int64)
    features = {name: encode_cached(create_encoder(name), catalog, cache_dir=args.cache_dir, progress=False)
                for name in args.encoders}
    oracle = Path(args.data) / "oracle" / "item_latent.npy"
    if oracle.is_file():
        print(f"oracle latent          proxy AUC {history_proxy_auc(np.load(oracle)[ids], ids, args.data):.4f}")
    random = np.random.default_rng(0).normal(size=(len(ids), 128))
    print(f"random table           proxy AUC {history_proxy_auc(random, ids, args.data):.4f}")
    for text in args.head or ["concat_pca"]:
        spec = parse_spec(text)
        head = build_head(spec, None)
        sequences, _ = _head_sequences(head, None, catalog, catalog_root(args.data), args.data)
        start = time.perf_counter()
        vectors = head.fit_transform(features, sequences)
        seconds = time.perf_counter() - start
        auc = history_proxy_auc(vectors, ids, args.data)
        extra = f" best step {head.best_step_}/{head.steps_}" if hasattr(head, "best_step_") else ""
        print(f"{json.dumps(spec) if isinstance(spec, dict) else spec:22s} proxy AUC {auc:.4f}  "
              f"({seconds:.0f} s{extra})", flush=True)
        if args.save:
            Path(args.save).mkdir(parents=True, exist_ok=True)
            np.save(Path(args.save) / f"{abs(hash(text)) % 10**8}.npy", vectors)


def catalog_root(data: str) -> Path:
    from mmembed.datasets import find_layout

    return find_layout(data).root


if __name__ == "__main__":
    main()
