"""The demo behind `bash run.sh demo`: the recipe ``recipes/demo.yaml``, run like
``mmembed run`` into ``runs/demo``.

It generates synthetic MicroLens at the ``demo`` scale (once), extracts the offline encoders' features
(cached), fits the fusion heads, trains the challenge's fixed DIN on every table, runs the
neighbour checks and writes the report; it ends with the table and the report's path.
Everything is cached by content, so a second run computes nothing new and a killed one
resumes. ``--quick`` runs the same recipe on the ``tiny`` set in a minute or two.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Sequence

#: No CLIP weights can be fetched offline: the demo's image tower is random-init (and
#: labelled so); the small ViT-S-32 keeps its image pass within the 10-minute budget.
#: `mmembed extract` names this spec (as --encoder) when clip's weights are missing.
OFFLINE_CLIP = {"name": "clip", "model": "ViT-S-32", "towers": "image", "pretrained": None}

#: the shipped recipe, beside the package in a clone of the repository
DEMO_RECIPE = Path(__file__).resolve().parent.parent / "recipes" / "demo.yaml"

#: ``--quick``: the tiny set (all its 4,000 train rows), one epoch of smaller DIN batches
QUICK_OVERRIDES = ("data.synthetic=tiny", "models.0.settings.batch_size=256", "models.0.max_epochs=1")


def run_demo(out: Path | None = None, seed: int = 0, quick: bool = False, overrides: Sequence[str] = (),
             progress: bool = True, recipe_path: Path | None = None) -> int:
    """Run the demo recipe (default :data:`DEMO_RECIPE`) into ``out`` (default
    ``runs/demo``, with ``quick`` ``runs/demo-quick``); 0 on success."""
    from mmembed.recipes import load_recipe
    from mmembed.recipes.cli import run_and_report

    recipe_path = Path(recipe_path or DEMO_RECIPE)
    if not recipe_path.is_file():
        raise FileNotFoundError(f"the demo recipe {recipe_path} is not here (it ships in the repository's "
                                f"recipes/ folder): run `mmembed run PATH/TO/demo.yaml` instead")
    started = time.perf_counter()
    recipe = load_recipe(recipe_path, [f"data.seed={seed}", *(QUICK_OVERRIDES if quick else ()), *overrides])
    run_dir = Path(out) if out is not None else Path("runs") / ("demo-quick" if quick else "demo")
    print(f"mmembed demo: {recipe_path.name}, {recipe.description}")
    run_and_report(recipe, run_dir, progress=progress)
    minutes, seconds = divmod(time.perf_counter() - started, 60)
    print(f"demo finished in {int(minutes)} min {seconds:.0f} s "
          "(a rerun reuses everything cached and computes nothing new)")
    return 0
