"""bench/demo_seeds.py: the key rows of a demo run and whether the demo holds."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
demo_seeds = pytest.importorskip("demo_seeds")

AUCS = {"provided": 0.58, "random": 0.55, "oracle": 0.66, "concat_pca": 0.56, "contrastive": 0.64}


def _run(tmp_path, aucs, sd=0.003):
    records = [{"model": "din", "embedding": n, "seed": 1, "valid_auc": a, "baseline": "concat_pca",
                "valid_auc_cov": {m: sd**2 if m == n else 0.0 for m in aucs}} for n, a in aucs.items()]
    (tmp_path / "metrics.json").write_text(json.dumps(records))
    return tmp_path


def test_a_ranking_demo_holds(tmp_path):
    record = {"seed": 0, "seconds": 480.0, **demo_seeds.key_rows(_run(tmp_path, AUCS))}
    assert record["warnings"] == [] and record["baseline"] == "concat_pca"
    estimate, low, high, verdict = record["vs_baseline"]["contrastive"]
    assert estimate == pytest.approx(0.08) and low < 0.08 < high and verdict == "better"
    assert record["references"]["provided-random"][3] == "better"
    assert demo_seeds.holds(record)
    table = demo_seeds.format_table([record])
    assert "| 0 | 8 min 00 s | 0.5800 | 0.5500 | 0.6600 | 0.5600 | 0.6400 |" in table and table.endswith("| 0 | yes |")


@pytest.mark.parametrize("change, why", [
    ({"seconds": 601.0}, "over the 10-minute budget"),
    ({"aucs": {**AUCS, "provided": 0.553}}, "provided - random undecided"),
    ({"aucs": {**AUCS, "contrastive": 0.55}}, "head below concat_pca"),
])
def test_a_demo_that_does_not_rank_or_runs_long_does_not_hold(tmp_path, change, why):
    record = {"seed": 0, "seconds": change.get("seconds", 480.0),
              **demo_seeds.key_rows(_run(tmp_path, change.get("aucs", AUCS)))}
    assert not demo_seeds.holds(record), why
