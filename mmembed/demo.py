"""The demo behind `bash run.sh demo`: the whole job on synthetic MicroLens data.

1. generate the synthetic MicroLens set (once), 2. validate it, 3. summarise it,
4. extract item features (sbert on titles, clip on covers + titles), fuse them to 128-d
and write a challenge-format item_info.parquet, 5. train the challenge's fixed DIN with the
provided embedding and with the extracted one, 6. print both side by side.

Every step keeps its output in the work directory (features in a cache, DIN runs in run
folders), so a second run skips or resumes what is done.
"""
from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path

logger = logging.getLogger(__name__)


#: No CLIP weights can be fetched offline: the demo's image tower is random-init (and
#: labelled so); the small ViT-S-32 keeps its image pass within the 10-minute budget.
#: `mmembed extract` names this spec (as --encoder) when clip's weights are missing.
OFFLINE_CLIP = {"name": "clip", "model": "ViT-S-32", "towers": "image", "pretrained": None}


@dataclass(frozen=True)
class DemoSettings:
    """What the demo runs. Only Task 1's tunables (batch size, ...) differ from the fixed DIN."""

    scale: str = "small"
    seed: int = 0
    epochs: int = 2               # epoch cap per DIN training (recorded in each result)
    batch_size: int = 2048        # a Task-1 tunable: 4x the steps per epoch of 8192
    encoders: tuple = ("sbert", OFFLINE_CLIP)
    skip_extract: bool = False


QUICK = DemoSettings(scale="tiny", epochs=1, batch_size=256)


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


def _extract(data: Path, workdir: Path, settings: DemoSettings) -> tuple[Path, str]:
    """Encode, fuse to 128-d, write item_info.parquet; return its path and a label."""
    from mmembed.api import extract

    start = time.perf_counter()
    embeddings = extract(data, encoders=list(settings.encoders), fusion="concat_pca", dim=128,
                         cache_dir=workdir / "feature-cache")
    path = embeddings.save_item_info(workdir / "extracted" / data.name / "item_info.parquet")
    labels = [e["label"] + (" (random-init)" if e["untrained"] else "")
              for e in embeddings.provenance["encoders"]]
    print(f"    {', '.join(labels)} -> concat_pca 128-d in {time.perf_counter() - start:.1f} s")
    print(f"    wrote {path}")
    return path, " + ".join(labels) + " -> concat_pca"


def _train_din(data: Path, run_dir: Path, item_info: Path | None, settings: DemoSettings) -> dict:
    import ctr_eval

    return ctr_eval.evaluate(data, item_info=item_info, model="din", run_dir=run_dir,
                             max_epochs=settings.epochs, batch_size=settings.batch_size)


def _table(rows: list[tuple[str, dict]]) -> str:
    width = max(len(name) for name, _ in rows)
    lines = [f"{'item embedding':<{width}}  valid AUC  logloss  epochs  train samples/s",
             "-" * (width + 44)]
    for name, r in rows:
        lines.append(f"{name:<{width}}  {r['valid_auc']:9.4f}  {r['valid_logloss']:7.4f}  "
                     f"{r['epochs_run']:>6}  {r['train_samples_per_s']:15.0f}")
    return "\n".join(lines)


def run_demo(workdir: Path, seed: int = 0, quick: bool = False,
             settings: DemoSettings | None = None) -> int:
    from mmembed.datasets import format_summary, summarize, validate_dataset

    settings = settings or (QUICK if quick else DemoSettings())
    if settings.seed != seed:
        settings = DemoSettings(**{**settings.__dict__, "seed": seed})
    data = workdir / f"data-{settings.scale}-seed{settings.seed}"
    _ensure_dataset(data, settings.scale, settings.seed)

    print("[2] validating the dataset (what the challenge's loader silently assumes) ...")
    report = validate_dataset(data)
    print(report.format())
    if not report.ok:
        return 1

    print("[3] summary")
    print(format_summary(summarize(data)))

    rows = []
    extracted = None
    if not settings.skip_extract:
        print("[4] extracting item features and fusing them to 128-d ...")
        extracted = _extract(data, workdir, settings)

    print(f"[5] the challenge's fixed DIN (Task 1 mode; batch_size {settings.batch_size}, "
          f"at most {settings.epochs} epoch(s)) ...")
    # One folder per data set and DIN settings: a --quick run and a full one in the same
    # workdir each resume their own runs instead of refusing each other's.
    runs = workdir / "din-runs" / f"{data.name}-bs{settings.batch_size}-e{settings.epochs}"
    print("    with the provided item_emb_d128")
    rows.append(("provided item_emb_d128", _train_din(data, runs / "provided", None, settings)))
    if extracted is not None:
        print(f"    with the extracted embedding ({extracted[1]})")
        rows.append((extracted[1], _train_din(data, runs / "extracted", extracted[0], settings)))

    print("[6] results on the validation split")
    print(_table(rows))
    if extracted is not None and "random-init" in extracted[1]:
        print("note: clip here has random-init weights (no pretrained weights offline); its "
              "features are untrained and labelled so.")
    return 0
