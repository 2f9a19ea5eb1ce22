"""The `mmembed` command from the shell, as a user runs it."""
from __future__ import annotations

import subprocess
import sys

import pyarrow.parquet as pq
from _parquet_edit import set_values


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mmembed.cli", "-q", *args],
                          capture_output=True, text=True, timeout=300)


def test_validate_good_directory_exits_zero(tiny_root):
    result = run_cli("validate", str(tiny_root))
    assert result.returncode == 0, result.stderr
    assert "OK" in result.stdout.splitlines()[0]


def test_validate_bad_directory_names_file_column_and_rows(tiny_copy):
    set_values(tiny_copy / "MicroLens_1M_x1" / "valid.parquet", "label", [3, 5], 2)

    result = run_cli("validate", str(tiny_copy))
    assert result.returncode == 1
    assert "valid.parquet" in result.stdout
    assert "label" in result.stdout
    assert "2 rows break this: row 3 (found 2), row 5 (found 2)" in result.stdout


def test_validate_missing_directory_is_one_clear_line(tmp_path):
    result = run_cli("validate", str(tmp_path / "nowhere"))
    assert result.returncode in (1, 2)
    assert "Traceback" not in result.stderr
    assert "not found" in (result.stdout + result.stderr)


def test_summary_reports_rows_of_each_split(tiny_root):
    result = run_cli("summary", str(tiny_root))
    assert result.returncode == 0, result.stderr
    rows = pq.read_metadata(tiny_root / "MicroLens_1M_x1" / "train.parquet").num_rows
    assert f"{rows:,}" in result.stdout


def test_extract_writes_a_valid_item_info(tiny_root, tmp_path):
    out = tmp_path / "item_info.parquet"
    result = run_cli("extract", str(tiny_root), "--encoder", "sbert", "--item-info", str(out),
                     "--cache-dir", str(tmp_path / "cache"))
    assert result.returncode == 0, result.stderr
    table = pq.read_table(out)
    n_items = pq.read_metadata(tiny_root / "item_feature.parquet").num_rows
    assert table.num_rows == n_items + 1
    assert len(table.column("item_emb_d128")[1].as_py()) == 128
    assert set(table.column("item_emb_d128")[0].as_py()) == {0.0}


def test_extract_refuses_item_info_of_the_wrong_width_before_work(tiny_root, tmp_path):
    result = run_cli("extract", str(tiny_root), "--encoder", "sbert", "--dim", "16",
                     "--item-info", str(tmp_path / "x.parquet"), "--cache-dir", str(tmp_path / "cache"))
    assert result.returncode == 2
    assert "128-d" in result.stderr and "--dim 16" in result.stderr
    assert not (tmp_path / "cache").exists()


def test_extracted_item_info_trains_the_fixed_din(tiny_root, tmp_path):
    import ctr_eval

    out = tmp_path / "item_info.parquet"
    result = run_cli("extract", str(tiny_root), "--encoder", "sbert", "--item-info", str(out),
                     "--cache-dir", str(tmp_path / "cache"))
    assert result.returncode == 0, result.stderr
    scored = ctr_eval.evaluate(tiny_root, item_info=out, max_epochs=1, batch_size=512,
                               progress=False, run_dir=tmp_path / "run")
    assert 0.0 <= scored["valid_auc"] <= 1.0 and scored["epochs_run"] == 1
    assert str(out) in scored["embedding_source"]
