"""How much of each synthetic latent block an encoder's features recover (ridge probe).

    python bench/encoder_probe.py --root /tmp/synth_small                 # 5,000 items
    python bench/encoder_probe.py --root DIR --items 500                  # a quick estimate
    python bench/encoder_probe.py --root DIR --encoders pixels "pixels:orientation_bins=0"
    python bench/encoder_probe.py --root DIR --results-file probe.json    # keep / reuse results

DIR is a synthetic dataset root (``mmembed synth``): the probe needs its ``oracle/``. The
first ``--items`` items of the catalog are encoded with mmembed's encoders through the
feature cache (``mmembed.cache.encode_cached``; a fresh temporary cache unless
``--cache-dir`` is given, so the times are encode times). For each encoder and each latent
block (``oracle/latent_layout.json``), a ridge regression from the features to the block's
8 dims is fitted on the first 80% of the items and scored on the last 20% (held-out R^2
over the 8 dims together). Features are standardised with the training part's mean and
standard deviation; the ridge penalty is chosen on the training part alone, by
leave-one-out error (scikit-learn's RidgeCV) over 10^-2 .. 10^4. Items an encoder marks
invalid are left out of its probe (their count is printed).

Default encoders: ``sbert`` (all-MiniLM-L6-v2 titles), the demo's offline CLIP image
tower (``mmembed.demo.OFFLINE_CLIP``: ViT-S-32 with RANDOM-INIT weights) and ``pixels``
(classical pixel features, no learned weights). ``--encoders`` takes specs as the
``mmembed`` command does (``NAME`` or ``NAME:key=value,...`` or a JSON object).

``--results-file F`` keeps each encoder's figures in F (JSON, written atomically), keyed
by dataset, items and encoder spec; a later run takes what F holds instead of encoding
again, and prints the table of everything F holds for that dataset and item count. Each
entry records the machine, with its load average when that encoder's run started.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import sys
import tempfile
import time
from datetime import date
from pathlib import Path
from typing import Any

import numpy as np

from benchlib import ResultsFile

logger = logging.getLogger(__name__)

ALPHAS = np.logspace(-2, 4, 13)
TRAIN_FRACTION = 0.8


def default_specs() -> list[Any]:
    from mmembed.demo import OFFLINE_CLIP

    return ["sbert", dict(OFFLINE_CLIP), "pixels"]


def load_truth(root: Path, item_ids: np.ndarray) -> tuple[np.ndarray, dict[str, tuple[int, int]]]:
    """(latent rows of ``item_ids``, {block: (lo, hi)}) from the dataset's oracle/."""
    oracle = root / "oracle"
    if not (oracle / "item_latent.npy").is_file():
        raise SystemExit(f"{oracle}/item_latent.npy not found: --root must be a synthetic "
                         "dataset root (mmembed synth --out DIR)")
    latent = np.load(oracle / "item_latent.npy")
    layout = json.loads((oracle / "latent_layout.json").read_text())
    blocks = {name: (int(lo), int(hi)) for name, (lo, hi) in layout["blocks"].items()}
    return latent[item_ids], blocks


def ridge_predict(x: np.ndarray, y: np.ndarray, cut: int) -> tuple[np.ndarray, float]:
    """(predictions for rows ``cut:``, chosen alpha) of a ridge regression fitted on rows
    ``:cut``: columns standardised with the training rows' statistics, the penalty chosen
    on them by leave-one-out error."""
    from sklearn.linear_model import RidgeCV

    if cut < 2 or len(x) - cut < 2:
        raise ValueError(f"the probe needs at least 10 items with features, got {len(x)}")
    mean = x[:cut].mean(axis=0)
    scale = x[:cut].std(axis=0)
    scale[scale == 0] = 1.0
    z = (x - mean) / scale
    model = RidgeCV(alphas=ALPHAS).fit(z[:cut], y[:cut])
    return model.predict(z[cut:]), float(model.alpha_)


def r2_score(pred: np.ndarray, y: np.ndarray) -> float:
    """R^2 over all columns of ``y`` together."""
    return float(1.0 - ((pred - y) ** 2).sum() / ((y - y.mean(axis=0)) ** 2).sum())


def ridge_r2(x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """(held-out R^2 over all columns of y, chosen alpha): first 80% train, rest test."""
    cut = int(TRAIN_FRACTION * len(x))
    pred, alpha = ridge_predict(x, y, cut)
    return r2_score(pred, y[cut:]), alpha


def probe_encoder(spec: Any, catalog: Any, latent: np.ndarray, blocks: dict[str, tuple[int, int]],
                  cache_dir: Path, num_workers: int | None) -> dict[str, Any]:
    """Encode through the cache, time it, and probe every block."""
    from mmembed.cache import encode_cached
    from mmembed.encoders import create_encoder

    encoder = create_encoder(spec)
    start = time.perf_counter()
    feats = encode_cached(encoder, catalog, cache_dir=cache_dir, progress=False,
                          num_workers=num_workers)
    seconds = time.perf_counter() - start
    x = feats.vectors[feats.valid].astype(np.float64)
    y = latent[feats.valid].astype(np.float64)
    r2, alphas = {}, {}
    for block, (lo, hi) in blocks.items():
        r2[block], alphas[block] = ridge_r2(x, y[:, lo:hi])
    return {
        "encoder": encoder.name, "dim": encoder.dim, "weights_id": encoder.weights_id(),
        "random_init": encoder.is_random_init, "n_valid": int(feats.valid.sum()),
        "encode_seconds": round(seconds, 2), "cache_hit": bool(feats.info["cache"]["hit"]),
        "num_workers": num_workers, "r2": r2, "alpha": alphas,
    }


def machine() -> dict[str, Any]:
    import torch

    return {"date": date.today().isoformat(), "platform": platform.platform(),
            "cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "load_avg": [round(v, 2) for v in os.getloadavg()]}


def result_key(root: Path, items: int, spec: Any) -> str:
    from mmembed.api import format_spec

    return f"{root.resolve()}|{items}|{format_spec(spec)}"


def format_table(rows: dict[str, dict[str, Any]], blocks: list[str]) -> str:
    """A Markdown table: one row per encoder, R^2 per block, dim, valid items, seconds."""
    head = ["encoder spec", *blocks, "dim", "items", "encode s"]
    lines = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    for spec, row in rows.items():
        label = f"`{spec}`" + (" (RANDOM INIT)" if row["random_init"] else "")
        cells = [f"{row['r2'][b]:.3f}" for b in blocks]
        seconds = f"{row['encode_seconds']:.1f}" + (" (cache hit)" if row["cache_hit"] else "")
        lines.append("| " + " | ".join([label, *cells, str(row["dim"]), str(row["n_valid"]), seconds]) + " |")
    return "\n".join(lines)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, required=True, help="synthetic dataset root (with oracle/)")
    parser.add_argument("--items", type=int, default=5000, help="first N items of the catalog (default 5000)")
    parser.add_argument("--encoders", nargs="+", default=None,
                        help="encoder specs (default: sbert, the demo's random-init clip, pixels)")
    parser.add_argument("--results-file", type=Path, default=None, help="JSON file to keep and reuse results")
    parser.add_argument("--cache-dir", type=Path, default=None,
                        help="feature cache root (default: a temporary folder, removed at the end)")
    parser.add_argument("--num-workers", type=int, default=None,
                        help="DataLoader workers for image encoders (default: the encoder's own)")
    args = parser.parse_args(argv)
    if args.items < 10:
        parser.error(f"--items must be at least 10, got {args.items}")
    return args


def run(args: argparse.Namespace, cache_dir: Path) -> tuple[dict[str, dict[str, Any]], list[str]]:
    """(rows by spec, block names in layout order): every requested encoder probed, or
    taken from the results file."""
    from mmembed.api import format_spec, parse_spec
    from mmembed.datasets import ItemCatalog

    specs = default_specs() if args.encoders is None else [parse_spec(s) for s in args.encoders]
    full = ItemCatalog.from_dir(args.root, progress=False)
    catalog = full.subset(np.arange(min(args.items, len(full))))
    latent, blocks = load_truth(args.root, np.asarray(catalog.item_ids))
    store = ResultsFile(args.results_file) if args.results_file is not None else None
    stored = store.read() if store is not None else {}
    rows: dict[str, dict[str, Any]] = {}
    for spec in specs:
        key = result_key(args.root, len(catalog), spec)
        if key not in stored:
            logger.info("probing %s on %d items", format_spec(spec), len(catalog))
            facts = machine()  # before the run: its load average is the one it started under
            stored[key] = {**probe_encoder(spec, catalog, latent, blocks, cache_dir, args.num_workers),
                           "machine": facts, "spec": format_spec(spec)}
            if store is not None:
                store.put(key, stored[key])
        rows[format_spec(spec)] = stored[key]
    prefix = f"{args.root.resolve()}|{len(catalog)}|"
    for key, row in stored.items():  # everything else F holds for this data and size
        if key.startswith(prefix):
            rows.setdefault(row["spec"], row)
    return rows, list(blocks)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    with tempfile.TemporaryDirectory(prefix="encoder_probe_") as tmp:
        cache_dir = args.cache_dir if args.cache_dir is not None else Path(tmp)
        rows, blocks = run(args, cache_dir)
    n_items = min(row["n_valid"] for row in rows.values())
    print(f"held-out ridge R^2 of each latent block ({args.root}, first {args.items} items or all "
          f"if fewer, 80/20 split, alpha by leave-one-out on the train part; at least {n_items} "
          "valid):")
    print(format_table(rows, blocks))
    print(f"machine (load average now): {json.dumps(machine())}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
