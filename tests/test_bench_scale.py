"""bench/scale.py: stages in child processes, the growth exponent and the table."""
from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench"
sys.path.insert(0, str(BENCH))
scale = pytest.importorskip("scale")


def test_the_growth_exponent_uses_items_or_rows_by_stage():
    items = scale.sizes("full")["items"] / scale.sizes("small")["items"]
    rows = scale.sizes("full")["rows"] / scale.sizes("small")["rows"]
    results = {"small": {"encode:sbert": {"seconds": 10.0, "peak_mb": 1},
                         "histories": {"seconds": 2.0, "peak_mb": 1},
                         "fit:gated": {"seconds": 60.0, "peak_mb": 1}},
               "full": {"encode:sbert": {"seconds": 10.0 * items, "peak_mb": 1},
                        "histories": {"seconds": 2.0 * rows ** 1.5, "peak_mb": 1},
                        "fit:gated": {"error": "exit 1: killed"}}}
    assert scale.exponent(results, "encode:sbert") == "1.00"  # linear in items
    assert scale.exponent(results, "histories") == "1.50"  # per row, faster than the rows
    assert scale.exponent(results, "fit:gated") == ""  # a failed run gives no exponent
    assert math.isclose(rows, 18.0)


def test_the_table_shows_times_peaks_failures_and_notes(capsys):
    results = {"tiny": {"synth": {"seconds": 3.2, "peak_mb": 512.0}},
               "full": {"synth": {"seconds": 150.0, "peak_mb": 2048.0, "note": "covers included"},
                        "fit:gated": {"error": "exit 1: Traceback\nMemoryError"}}}
    scale.print_table(results)
    lines = capsys.readouterr().out.splitlines()
    synth = next(line for line in lines if line.startswith("| synth |"))
    assert "3.2 s" in synth and "0.50 GB" in synth and "2.5 min" in synth and "2.00 GB" in synth
    assert "full: covers included" in synth
    gated = next(line for line in lines if line.startswith("| fit:gated |"))
    assert "failed" in gated and "MemoryError" in gated


def test_a_stage_runs_in_a_child_and_reports_its_own_peak(tmp_path):
    # the histories stage on a tiny set made by the synth stage, each in its own process
    for stage in ("synth", "histories"):
        out = subprocess.run([sys.executable, str(BENCH / "scale.py"), "--child", stage, "--scale", "tiny",
                              "--work", str(tmp_path)], capture_output=True, text=True, check=True)
        figures = json.loads(out.stdout.strip().splitlines()[-1])
        assert figures["seconds"] > 0 and figures["peak_mb"] > 10
    assert figures["kept"] > 0 and figures["rows_read"] > figures["kept"]


def test_every_stage_has_its_function():
    for stage in scale.STAGES:
        assert callable(getattr(scale, f"_stage_{stage.partition(':')[0]}", None)), stage
