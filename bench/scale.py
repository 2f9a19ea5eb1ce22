"""Every stage of the chain from tiny to full: wall time, peak memory, growth with size.

    python bench/scale.py                         # tiny, small, full (full: about 1.5 hours)
    python bench/scale.py --scales tiny,small     # minutes
    python bench/scale.py --stages synth,histories,fit:contrastive --scales full
    python bench/scale.py --print-only            # the table of what is on disk

Each stage runs in a fresh child process, which reports its wall time and its own peak
resident memory (VmHWM, benchlib.peak_rss_mb). Results are kept per (scale, stage) in
bench/results/scale.json (``--results-file``): a rerun skips finished stages (``--redo`` reruns them), so an
interrupted run resumes. Datasets and caches live under ``--work`` (default
runs/bench/scale/).

Stages (size = items for per-item stages, train rows for per-row stages):

- ``synth``: the synthetic generator, covers included (rows);
- ``validate``: ``mmembed validate``'s checks (rows);
- ``encode:sbert``, ``encode:pixels``, ``encode:clip``: features of every item into an
  empty cache; ``clip`` is open_clip's ViT-S-32 with random weights, for its time only, on
  at most ``--clip-items`` items (about 20 a second here), scaled to all: its growth is
  linear by construction (items);
- ``histories``: the heads' train histories (rows);
- ``fit:concat_pca``, ``fit:contrastive``, ``fit:gated``: the head's fit on cached sbert +
  pixels features (histories loaded in the same child, their time reported apart) (items);
- ``knn``: every neighbour check and the history proxy AUC on the contrastive table (items);
- ``din_epoch``: one fixed-DIN epoch (Task 1 config, batch 8192) on at most
  ``--din-rows`` train rows, scaled to the whole split (rows);
- ``extract:contrastive``, ``extract:gated``: the command
  ``mmembed extract DATA --encoder sbert --encoder pixels --fusion HEAD`` with the features
  already cached (the peak-memory target: 6 GiB at full; run at full only, where it is a
  target: at the other scales it is the fit stage again) (items).

The growth exponent k of a stage is log(t_full / t_small) / log(size_full / size_small):
1 is linear in the data, 0 flat (a fixed budget), above 1 faster than the data.
"""
from __future__ import annotations

import argparse
import json
import math
import shutil
import subprocess
import sys
import time
from pathlib import Path

from benchlib import ResultsFile, peak_rss_mb

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results" / "scale.json"
SCALES = ("tiny", "small", "full")
STAGES = ("synth", "validate", "encode:sbert", "encode:pixels", "encode:clip", "histories",
          "fit:concat_pca", "fit:contrastive", "fit:gated", "knn", "din_epoch",
          "extract:contrastive", "extract:gated")
PER_ROW = {"synth", "validate", "histories", "din_epoch"}
FULL_ONLY = {"extract:contrastive", "extract:gated"}
CLIP = {"name": "clip", "model": "ViT-S-32", "towers": "image", "pretrained": None}
ENCODERS = {"sbert": {"name": "sbert"}, "pixels": {"name": "pixels"}, "clip": CLIP}


# -- the child: one stage, one process ---------------------------------------------------------
def run_stage(stage: str, scale: str, work: Path, args: argparse.Namespace) -> dict:
    """Run ``stage`` here; its figures (seconds, and what else it measures)."""
    root = work / scale / "data"
    kind, _, name = stage.partition(":")
    start = time.perf_counter()
    extra = globals()[f"_stage_{kind}"](name, scale, root, work / scale, args)
    seconds = time.perf_counter() - start
    return {"seconds": extra.pop("seconds", seconds), **extra}


def _stage_synth(_: str, scale: str, root: Path, work: Path, args: argparse.Namespace) -> dict:
    from mmembed.datasets.synthetic import generate

    generate(root, scale=scale, seed=args.seed, overwrite=True)
    return {}


def _stage_validate(_: str, scale: str, root: Path, work: Path, args: argparse.Namespace) -> dict:
    from mmembed.datasets import validate_dataset

    report = validate_dataset(root, progress=False)
    return {"problems": len(report.problems)}


def _features(names: list[str], root: Path, work: Path, fresh: bool = False, limit: int | None = None) -> dict:
    from mmembed.cache import encode_cached
    from mmembed.datasets import ItemCatalog
    from mmembed.encoders import create_encoder

    catalog = ItemCatalog.from_dir(root, progress=False)
    if limit is not None and limit < len(catalog):
        catalog = catalog.subset(list(range(limit)))
    out = {}
    for name in names:
        cache = work / ("cache-fresh" if fresh else "cache")
        if fresh:
            shutil.rmtree(cache, ignore_errors=True)
        out[name] = encode_cached(create_encoder(ENCODERS[name]), catalog, cache_dir=cache, progress=False)
    return out


def _stage_encode(name: str, scale: str, root: Path, work: Path, args: argparse.Namespace) -> dict:
    from mmembed.datasets import ItemCatalog

    n_items = len(ItemCatalog.from_dir(root, progress=False))
    limit = args.clip_items if name == "clip" else None
    start = time.perf_counter()
    features = _features([name], root, work, fresh=True, limit=limit)
    seconds = time.perf_counter() - start
    done = len(features[name].vectors)
    if name != "clip":  # the fits and extracts read these features: keep them
        shutil.copytree(work / "cache-fresh", work / "cache", dirs_exist_ok=True)
    note = f"{done:,} of {n_items:,} items, scaled" if done < n_items else ""
    return {"seconds": seconds * n_items / done, "items_encoded": done, "note": note}


def _stage_histories(_: str, scale: str, root: Path, work: Path, args: argparse.Namespace) -> dict:
    from mmembed.datasets.histories import HEAD_MAX_HISTORIES, load_train_histories

    got = load_train_histories(root, max_histories=HEAD_MAX_HISTORIES)
    return {"kept": len(got), "rows_read": got.rows_read, "kept_mb": round(got.item_seq.nbytes / 2**20, 1)}


def _stage_fit(name: str, scale: str, root: Path, work: Path, args: argparse.Namespace) -> dict:
    import numpy as np

    from mmembed.api import _head_sequences
    from mmembed.datasets import ItemCatalog
    from mmembed.fusion import create_fusion

    features = _features(["sbert", "pixels"], root, work)
    head = create_fusion(name)
    catalog = ItemCatalog.from_dir(root, progress=False)
    start = time.perf_counter()
    sequences, _ = _head_sequences(head, None, catalog, root, str(root))
    loaded = time.perf_counter()
    vectors = head.fit_transform(features, sequences)
    seconds = time.perf_counter() - loaded
    np.save(work / f"table-{name}.npy", vectors)
    extra = {"history_seconds": round(loaded - start, 1)} if head.uses_sequences else {}
    if hasattr(head, "steps_"):
        extra.update(steps=head.steps_, best_step=head.best_step_, stopped=head.stopped_)
    return {"seconds": seconds, **extra}


def _stage_knn(_: str, scale: str, root: Path, work: Path, args: argparse.Namespace) -> dict:
    import numpy as np

    from mmembed.datasets import load_interactions
    from mmembed.datasets.histories import load_train_histories
    from mmembed.knn import history_proxy_auc, neighbour_report
    from ctr_eval.format import find_layout, read_item_info

    table = np.load(work / "table-contrastive.npy")
    tags = read_item_info(find_layout(root).item_info, ("item_tags",))["item_tags"][1:]
    start = time.perf_counter()
    report = neighbour_report(table, tags=tags, histories=load_train_histories(root).item_seq)
    valid = load_interactions(root, "valid")
    proxy = history_proxy_auc(table, valid.item_seq, valid.item_id, valid.label)
    recall = report.metrics.get("recall")
    return {"seconds": time.perf_counter() - start, "proxy_auc": round(float(proxy), 4),
            "recall": None if recall is None else round(float(recall), 3)}


def _stage_din_epoch(_: str, scale: str, root: Path, work: Path, args: argparse.Namespace) -> dict:
    import ctr_eval
    from mmembed.datasets import load_interactions

    rows = len(load_interactions(root, "train"))
    slice_rows = min(rows, args.din_rows)
    result = ctr_eval.evaluate(root, max_epochs=1, progress=False, train_rows=slice_rows if slice_rows < rows else None)
    per_s = result["train_samples_per_s"]
    note = f"{slice_rows:,} of {rows:,} rows, scaled" if slice_rows < rows else ""
    return {"seconds": rows / per_s, "samples_per_s": round(per_s, 1), "valid_auc": round(result["valid_auc"], 4),
            "note": note}


def _stage_extract(name: str, scale: str, root: Path, work: Path, args: argparse.Namespace) -> dict:
    out = work / f"extract-{name}"
    shutil.rmtree(out, ignore_errors=True)
    command = [str(Path(sys.executable).with_name("mmembed")), "extract", str(root), "--encoder", "sbert",
               "--encoder", "pixels", "--fusion", name, "--out", str(out), "--cache-dir", str(work / "cache"), "-q"]
    start = time.perf_counter()
    child = subprocess.Popen(command)
    peak = _wait_peak(child)
    if child.returncode:
        raise RuntimeError(f"{' '.join(command)} exited with {child.returncode}")
    return {"seconds": time.perf_counter() - start, "command_peak_mb": round(peak, 1)}


def _wait_peak(child: subprocess.Popen) -> float:
    """Wait for ``child``; its peak RSS in MB (VmHWM, read until it exits)."""
    peak = 0.0
    status = Path(f"/proc/{child.pid}/status")
    while child.poll() is None:
        try:
            for line in status.read_text().splitlines():
                if line.startswith("VmHWM:"):
                    peak = max(peak, int(line.split()[1]) / 1024)
        except OSError:
            pass
        time.sleep(0.5)
    return peak


# -- the parent: stages in children, results kept ---------------------------------------------
def sizes(scale: str) -> dict:
    from mmembed.datasets.synthetic.scales import SCALES as PRESETS

    preset = PRESETS[scale]
    return {"items": preset.n_items, "rows": preset.n_train}


def run_child(stage: str, scale: str, args: argparse.Namespace) -> dict:
    command = [sys.executable, __file__, "--child", stage, "--scale", scale, "--work", str(args.work),
               "--seed", str(args.seed), "--clip-items", str(args.clip_items), "--din-rows", str(args.din_rows)]
    start = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode:
        tail = (done.stderr or done.stdout)[-2000:]
        return {"error": f"exit {done.returncode}: {tail}", "wall": round(time.perf_counter() - start, 1)}
    return json.loads(done.stdout.strip().splitlines()[-1])


def exponent(results: dict, stage: str) -> str:
    small, full = results.get("small", {}).get(stage), results.get("full", {}).get(stage)
    if not small or not full or "error" in small or "error" in full:
        return ""
    unit = "rows" if stage in PER_ROW else "items"
    ratio = sizes("full")[unit] / sizes("small")[unit]
    return f"{math.log(max(full['seconds'], 1e-3) / max(small['seconds'], 1e-3)) / math.log(ratio):.2f}"


def print_table(results: dict) -> None:
    print("| stage | " + " | ".join(f"{s} time | {s} peak" for s in SCALES) + " | k (small->full) | notes |")
    print("| --- | " + " | ".join("---: | ---:" for _ in SCALES) + " | ---: | --- |")
    for stage in STAGES:
        cells, notes = [], []
        for scale in SCALES:
            r = results.get(scale, {}).get(stage)
            if not r:
                cells += ["", ""]
            elif "error" in r:
                cells += ["failed", ""]
                notes.append(f"{scale}: {r['error'].splitlines()[-1][:80]}")
            else:
                peak = r.get("command_peak_mb", r["peak_mb"])
                cells += [_duration(r["seconds"]), f"{peak / 1024:.2f} GB"]
                if r.get("note"):
                    notes.append(f"{scale}: {r['note']}")
        print(f"| {stage} | " + " | ".join(cells) + f" | {exponent(results, stage)} | {'; '.join(notes)} |")


def _duration(seconds: float) -> str:
    return f"{seconds:.1f} s" if seconds < 120 else f"{seconds / 60:.1f} min"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--scales", default=",".join(SCALES))
    p.add_argument("--stages", default=",".join(STAGES))
    p.add_argument("--work", type=Path, default=Path("runs") / "bench" / "scale")
    p.add_argument("--seed", type=int, default=0, help="synthetic data seed")
    p.add_argument("--clip-items", type=int, default=2000, help="items clip encodes at most (scaled to all)")
    p.add_argument("--din-rows", type=int, default=100_000, help="train rows of the DIN epoch (scaled to all)")
    p.add_argument("--results-file", type=Path, default=RESULTS, help="finished stages, kept (default %(default)s)")
    p.add_argument("--redo", action="store_true", help="rerun stages already in the results")
    p.add_argument("--print-only", action="store_true")
    p.add_argument("--child", help=argparse.SUPPRESS)
    p.add_argument("--scale", help=argparse.SUPPRESS)
    return p.parse_args(argv)


def main() -> None:
    args = parse_args()
    if args.child:
        figures = run_stage(args.child, args.scale, args.work, args)
        print(json.dumps({**figures, "peak_mb": round(peak_rss_mb(), 1)}))
        return
    store = ResultsFile(args.results_file)
    results = store.read()
    if not args.print_only:
        for scale in args.scales.split(","):
            for stage in args.stages.split(","):
                if stage not in STAGES:
                    raise SystemExit(f"unknown stage {stage!r}; known: {', '.join(STAGES)}")
                if stage in FULL_ONLY and scale != "full":
                    continue
                if results.get(scale, {}).get(stage) and "error" not in results[scale][stage] and not args.redo:
                    continue
                print(f"[scale] {scale} {stage} ...", file=sys.stderr, flush=True)
                figures = run_child(stage, scale, args)
                results[scale] = store.merge(scale, {stage: figures})
                print(f"[scale] {scale} {stage}: {json.dumps(figures)}", file=sys.stderr, flush=True)
    print_table(results)


if __name__ == "__main__":
    main()
