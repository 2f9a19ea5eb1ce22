"""bench/benchlib.py: the results file, argument groups, data and peak memory the benches share."""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench"
sys.path.insert(0, str(BENCH))
benchlib = pytest.importorskip("benchlib")


def test_results_file_keeps_each_key_and_merges_fields(tmp_path):
    store = benchlib.ResultsFile(tmp_path / "sub" / "results.json")
    assert store.read() == {} and "a" not in store
    store.put("a", {"auc": 0.61})
    store.merge("b", {"fuxictr": 1})
    merged = store.merge("b", {"ctr_eval": 2})
    assert merged == {"fuxictr": 1, "ctr_eval": 2}
    assert json.loads(store.path.read_text()) == {"a": {"auc": 0.61}, "b": {"fuxictr": 1, "ctr_eval": 2}}
    store.put("a", 3)  # put replaces
    assert store.get("a") == 3 and store.get("missing", "none") == "none"
    assert [p.name for p in store.path.parent.iterdir() if p.suffix == ".tmp"] == []


def test_results_file_loses_nothing_when_two_processes_write_at_once(tmp_path):
    path = tmp_path / "shared.json"
    code = ("import sys; sys.path.insert(0, sys.argv[1]); from benchlib import ResultsFile; "
            "store = ResultsFile(sys.argv[2]); side = sys.argv[3]\n"
            "for i in range(40): store.merge(f'seed {i}', {side: i})")
    writers = [subprocess.Popen([sys.executable, "-c", code, str(BENCH), str(path), side])
               for side in ("fuxictr", "ctr_eval")]
    assert [w.wait(timeout=120) for w in writers] == [0, 0]
    stored = json.loads(path.read_text())
    assert stored == {f"seed {i}": {"fuxictr": i, "ctr_eval": i} for i in range(40)}


def test_results_file_names_a_broken_file(tmp_path):
    path = tmp_path / "r.json"
    path.write_text("{not json")
    with pytest.raises(SystemExit, match=r"r\.json is not valid JSON"):
        benchlib.ResultsFile(path).read()
    path.write_text("[1, 2]")
    with pytest.raises(SystemExit, match="holds a list, not a JSON object"):
        benchlib.ResultsFile(path).put("k", 1)


def test_argument_groups_parse_and_check_the_batch_size(capsys):
    p = argparse.ArgumentParser()
    benchlib.add_batch_size(p, 1024)
    benchlib.add_data_args(p, scale="tiny")
    benchlib.add_random_batch_args(p)
    args = p.parse_args(["--batch-size", "256", "--data-seed", "3"])
    assert (args.batch_size, args.scale, args.data_seed, args.data_dir, args.items, args.positions) == \
        (256, "tiny", 3, None, 91_717, 64)
    with pytest.raises(SystemExit):
        p.parse_args(["--batch-size", "0"])
    assert "must be >= 1, got 0" in capsys.readouterr().err


def test_dataset_split_names_a_missing_file(tmp_path):
    (tmp_path / "train.parquet").write_bytes(b"")
    args = argparse.Namespace(data_dir=str(tmp_path), scale="tiny", data_seed=0, cache_dir=str(tmp_path))
    with pytest.raises(SystemExit, match=r"valid\.parquet not found"):
        benchlib.dataset_split(args)


def test_synthetic_data_is_generated_once_and_reused(tmp_path, monkeypatch):
    import mmembed.datasets.synthetic as synthetic

    calls = []
    real = synthetic.generate

    def counting(root, **kwargs):
        calls.append(kwargs)
        return real(root, **kwargs)

    monkeypatch.setattr(synthetic, "generate", counting)
    first = benchlib.synthetic_root(tmp_path, "tiny", seed=1)
    again = benchlib.synthetic_root(tmp_path, "tiny", seed=1)
    assert first == again == tmp_path / "synthetic-tiny-seed1" and len(calls) == 1
    assert (first / benchlib.SPLIT_DIR / "train.parquet").is_file()
    assert [p.name for p in tmp_path.iterdir()] == ["synthetic-tiny-seed1"]  # no temporary folder left
    args = argparse.Namespace(data_dir=None, scale="tiny", data_seed=1, cache_dir=str(tmp_path))
    assert benchlib.dataset_split(args) == first / benchlib.SPLIT_DIR and len(calls) == 1


def test_make_bench_root_takes_the_first_rows(tmp_path):
    split = benchlib.synthetic_root(tmp_path, "tiny", seed=0) / benchlib.SPLIT_DIR
    counts = benchlib.make_bench_root(split, tmp_path / "copy", train_rows=50, valid_rows=20)
    assert (counts["train"], counts["valid"]) == (50, 20) and counts["items"] > 0
    import pyarrow.parquet as pq

    copied = pq.read_table(tmp_path / "copy" / benchlib.SPLIT_DIR / "train.parquet")
    assert copied.equals(pq.read_table(split / "train.parquet").slice(0, 50))


@pytest.mark.skipif(not Path("/proc/self/status").is_file(), reason="needs Linux /proc")
def test_child_peak_rss_leaves_out_the_parents_memory():
    held = np.ones(600 * 2**20 // 8)  # the parent holds 600 MB while the child runs
    code = ("import sys; sys.path.insert(0, sys.argv[1]); import resource; from benchlib import peak_rss_mb; "
            "print(peak_rss_mb(), resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)")
    out = subprocess.run([sys.executable, "-c", code, str(BENCH)], capture_output=True, text=True, check=True)
    own, inherited = map(float, out.stdout.split())
    assert held.sum() == held.size
    assert 3 < own < 300  # a bare Python process, well under the parent's 600 MB
    # where the kernel carries the high-water mark into the child, ru_maxrss shows it
    assert inherited >= own
