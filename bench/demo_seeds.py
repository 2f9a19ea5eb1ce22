"""The demo on several synthetic data seeds: does its judge rank, and within 10 minutes?

    python bench/demo_seeds.py                  # data seeds 0-4, the shipped recipes/demo.yaml
    python bench/demo_seeds.py --seeds 0,1 --set models.0.max_epochs=3
    python bench/demo_seeds.py --print-only     # the table from the results file

For each data seed it runs ``mmembed run recipes/demo.yaml --set data.seed=K -q`` in a
child process with its own run folder and cache (``--work-dir``/seedK), as a new user's
first demo would run after the set-up (data generated, features computed, heads fitted,
every table judged, report written), and records the wall time, the child's peak
resident memory and the key rows of the summary: each reference's valid AUC, the heads'
paired difference to the baseline with its interval and verdict, and the judge's warnings.
The demo holds when, on every seed, random < provided < oracle and every trained head >
``concat_pca`` are decided (intervals clear of zero), with no warning, within 10 minutes.

Finished seeds are kept in ``--results-file`` (written atomically after each), so a killed
bench resumes with the next seed.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

from benchlib import ResultsFile, logger

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_RESULTS = ROOT / "bench" / "results" / "demo_seeds.json"
DEFAULT_RECIPE = ROOT / "recipes" / "demo.yaml"
BUDGET_S = 600.0
REFERENCE_PAIRS = (("provided", "random"), ("oracle", "provided"))
REFERENCES = ("provided", "random", "oracle")


log = logger("demo_seeds")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", default="0,1,2,3,4", help="synthetic data seeds")
    p.add_argument("--recipe", default=str(DEFAULT_RECIPE))
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY.PATH=VALUE",
                   help="override a value of the recipe (recorded with the results)")
    p.add_argument("--work-dir", default="runs/bench/demo_seeds")
    p.add_argument("--results-file", default=str(DEFAULT_RESULTS))
    p.add_argument("--print-only", action="store_true", help="print the table, run nothing")
    args = p.parse_args(argv)
    args.seeds = [int(s) for s in args.seeds.split(",") if s]
    args.work_dir, args.results_file = Path(args.work_dir), Path(args.results_file)
    return args


def result_key(recipe: str, overrides: list[str], seed: int) -> str:
    """The resolved recipe's content (a changed recipe file is another key) and the seed."""
    import hashlib

    from mmembed.recipes import load_recipe

    resolved = load_recipe(recipe, [*overrides, f"data.seed={seed}"]).to_dict()
    digest = hashlib.sha256(json.dumps(resolved, sort_keys=True).encode()).hexdigest()[:12]
    return json.dumps([Path(recipe).name, digest, seed])


def run_seed(args: argparse.Namespace, seed: int) -> dict:
    """One demo run in a child process; its time, peak memory and key rows."""
    run_dir = args.work_dir / f"seed{seed}"
    if run_dir.exists():  # a first run each time: nothing cached from an earlier try
        import shutil

        shutil.rmtree(run_dir)
    command = [sys.executable, "-m", "mmembed.cli", "run", args.recipe, "-q", "--out", str(run_dir / "run"),
               "--cache-dir", str(run_dir / "cache"), "--set", f"data.seed={seed}"]
    for item in args.overrides:
        command += ["--set", item]
    log(f"seed {seed}: {' '.join(command[2:])}")
    started = time.perf_counter()
    done = subprocess.run(command, cwd=ROOT, env={**os.environ, "PYTHONUNBUFFERED": "1"},
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    seconds = time.perf_counter() - started
    peak_gb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1e6  # largest child so far
    (run_dir / "output.log").write_text(done.stdout)
    if done.returncode != 0:
        raise SystemExit(f"seed {seed}: the demo failed (exit {done.returncode}); see {run_dir / 'output.log'}")
    return {"seed": seed, "seconds": seconds, "peak_gb_max_so_far": round(peak_gb, 2),
            **key_rows(run_dir / "run")}


def key_rows(run_dir: Path) -> dict:
    from mmembed.recipes.results import judge_notes, summary_rows

    rows = summary_rows(json.loads((run_dir / "metrics.json").read_text()))
    by_name = {r["embedding"]: r for r in rows}
    out = {"valid_auc": {n: r["mean"]["valid_auc"] for n, r in by_name.items()},
           "proxy_auc": {n: r["mean"].get("proxy_auc") for n, r in by_name.items()},
           "baseline": rows[0]["baseline"], "warnings": judge_notes(rows), "vs_baseline": {}, "references": {}}
    for name, row in by_name.items():
        diff = row["vs_baseline"]
        if diff is not None and name != row["baseline"]:
            out["vs_baseline"][name] = [diff.estimate, diff.low, diff.high, diff.verdict]
    from mmembed.recipes.compare import paired_difference

    for high, low in REFERENCE_PAIRS:
        if high in by_name and low in by_name:
            d = paired_difference(by_name[high]["records"], by_name[low]["records"])
            out["references"][f"{high}-{low}"] = None if d is None else [d.estimate, d.low, d.high, d.verdict]
    return out


def holds(record: dict) -> bool:
    trained = {k: v for k, v in record["vs_baseline"].items() if k not in REFERENCES}
    return (not record["warnings"] and record["seconds"] <= BUDGET_S and bool(trained)
            and all(v[3] == "better" for v in trained.values())
            and all(v is not None and v[3] == "better" for v in record["references"].values()))


def _interval(v: list | None) -> str:
    return "-" if v is None else f"{v[0]:+.4f} [{v[1]:+.4f}, {v[2]:+.4f}] {v[3]}"


def format_table(records: list[dict]) -> str:
    if not records:
        return "(no results)"
    heads = sorted({k for r in records for k in r["vs_baseline"] if k not in REFERENCES})
    stored = list(records[0]["valid_auc"])  # every table's valid AUC: references first
    names = [n for n in REFERENCES if n in stored] + [n for n in stored if n not in REFERENCES]
    header = (["data seed", "time", *names, "provided - random", "oracle - provided"]
              + [f"{h} - {records[0]['baseline']}" for h in heads] + ["warnings", "holds"])
    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    for r in records:
        minutes, seconds = divmod(r["seconds"], 60)
        auc = r["valid_auc"]
        cells = [str(r["seed"]), f"{int(minutes)} min {seconds:02.0f} s",
                 *(f"{auc[n]:.4f}" if n in auc else "-" for n in names),
                 _interval(r["references"].get("provided-random")), _interval(r["references"].get("oracle-provided")),
                 *(_interval(r["vs_baseline"].get(h)) for h in heads), str(len(r["warnings"])),
                 "yes" if holds(r) else "no"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    store = ResultsFile(args.results_file)
    results = store.read()
    for seed in [] if args.print_only else args.seeds:
        key = result_key(args.recipe, args.overrides, seed)
        if key in results:
            continue
        results[key] = r = {**run_seed(args, seed), "recipe": Path(args.recipe).name, "overrides": args.overrides}
        store.put(key, r)
        log(f"seed {seed}: {r['seconds']:.0f} s, holds: {holds(r)}")
    chosen = [results[k] for k in (result_key(args.recipe, args.overrides, s) for s in args.seeds) if k in results]
    print(format_table(chosen))
    return 0 if chosen and all(holds(r) for r in chosen) else 1


if __name__ == "__main__":
    sys.exit(main())
