"""The demo behind `bash run.sh demo`: the whole job on synthetic MicroLens data.

Each step keeps its output in the work directory, so a second run skips what is done.
"""
from __future__ import annotations

import json
import logging
import time
from pathlib import Path

logger = logging.getLogger(__name__)


def _ensure_dataset(root: Path, scale: str, seed: int) -> None:
    """Generate the synthetic set once; a marker written last says it is complete."""
    from mmembed.datasets.synthetic import generate

    marker = root / ".mmembed-demo-dataset.json"
    want = {"scale": scale, "seed": seed}
    if marker.exists() and json.loads(marker.read_text()) == want:
        print(f"[1] synthetic MicroLens ({scale}, seed {seed}) already in {root}")
        return
    print(f"[1] generating synthetic MicroLens ({scale}, seed {seed}) into {root} ...")
    start = time.perf_counter()
    generate(root, scale=scale, seed=seed, progress=True, overwrite=True)
    marker.write_text(json.dumps(want))
    print(f"    done in {time.perf_counter() - start:.1f} s")


def run_demo(workdir: Path, seed: int = 0, quick: bool = False) -> int:
    from mmembed.datasets import format_summary, summarize, validate_dataset

    scale = "tiny" if quick else "small"
    data = workdir / f"data-{scale}-seed{seed}"
    _ensure_dataset(data, scale, seed)

    print("[2] validating the dataset (what the challenge's loader silently assumes) ...")
    report = validate_dataset(data)
    print(report.format())
    if not report.ok:
        return 1

    print("[3] summary")
    print(format_summary(summarize(data)))
    return 0
