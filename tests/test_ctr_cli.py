"""The ``ctr-eval`` command: train, predict, models, errors; multi-process and kill/resume (slow)."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import torch

import ctr_eval
from ctr_eval.cli import default_run_dir, main, parse_set
from ctr_eval.submission import read_submission
from ctr_eval.train import LAST_CHECKPOINT, RESULT_FILE

SMALL_SETS = ["--no-task1", "--set", "embedding_dim=8", "--set", "attention_hidden_units=[16]",
              "--set", "dnn_hidden_units=[32,16]", "--set", "batch_size=512"]


def test_parse_set_reads_json_values_and_keeps_other_text():
    assert parse_set(["learning_rate=1e-3", "batch_norm=false", "dnn_hidden_units=[64, 32]",
                      "embedding_regularizer=l2(1e-6)", "net_regularizer=null"]) == {
        "learning_rate": 1e-3, "batch_norm": False, "dnn_hidden_units": [64, 32],
        "embedding_regularizer": "l2(1e-6)", "net_regularizer": None}
    with pytest.raises(ValueError, match=r"--set expects key=value, got 'learning_rate'"):
        parse_set(["learning_rate"])


def test_default_run_dir_is_stable_per_command(tmp_path):
    a = default_run_dir("din", "abc", str(tmp_path), None)
    assert a == default_run_dir("din", "abc", str(tmp_path), None)
    assert a != default_run_dir("din", "abc", str(tmp_path), str(tmp_path / "x.parquet"))
    assert a.parts[0] == "ctr_eval_runs" and a.name.startswith("din-abc-")
    subset = default_run_dir("din", "abc", str(tmp_path), None, 500)  # --train-rows: its own folder
    assert subset != a and subset.name.endswith("-rows500")


def test_train_then_predict(tiny_root, tmp_path, capsys):
    run_dir = tmp_path / "run"
    code = main(["-q", "train", "--data", str(tiny_root), *SMALL_SETS, "--max-epochs", "1",
                 "--run-dir", str(run_dir), "--no-progress"])
    assert code == 0
    out = capsys.readouterr().out
    result = json.loads((run_dir / RESULT_FILE).read_text())
    assert f"valid AUC        {result['valid_auc']:.6f}" in out
    assert "config hash      " + result["config_hash"] in out
    code = main(["-q", "predict", "--run-dir", str(run_dir), "--data", str(tiny_root), "--task", "Task1&2",
                 "--out", str(tmp_path / "sub"), "--no-progress"])
    assert code == 0
    assert f"wrote {tmp_path / 'sub' / 'submission.zip'}" in capsys.readouterr().out
    task, scores = read_submission(tmp_path / "sub" / "submission.zip")
    n_test = pq.ParquetFile(tiny_root / "MicroLens_1M_x1" / "test.parquet").metadata.num_rows
    assert task == "Task1&2" and len(scores) == n_test
    # written atomically, yet with the usual umask mode (mkstemp alone leaves 0600)
    umask = os.umask(0)
    os.umask(umask)
    for path in (run_dir / RESULT_FILE, tmp_path / "sub" / "submission.zip", run_dir / "model_best.pt"):
        assert path.stat().st_mode & 0o777 == 0o666 & ~umask != 0o600, path


def test_train_json_output(tiny_root, tmp_path, capsys):
    code = main(["-q", "train", "--data", str(tiny_root), *SMALL_SETS, "--max-epochs", "1",
                 "--run-dir", str(tmp_path / "run"), "--no-progress", "--json"])
    assert code == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed == json.loads((tmp_path / "run" / RESULT_FILE).read_text())


def test_task1_lock_is_reported_as_a_usage_error(tiny_root, tmp_path, capsys):
    code = main(["train", "--data", str(tiny_root), "--set", "embedding_dim=8", "--run-dir", str(tmp_path / "r")])
    assert code == 2
    err = capsys.readouterr().err
    assert "ctr-eval train: error: Task 1 mode fixes the DIN configuration: embedding_dim may not change" in err
    assert "(pass --no-task1 for a free run)" in err and "task1=False" not in err
    assert not (tmp_path / "r").exists()


def test_missing_data_dir_is_reported(tmp_path, capsys):
    assert main(["train", "--data", str(tmp_path / "nope"), "--run-dir", str(tmp_path / "r")]) == 2
    assert f"{tmp_path / 'nope'}: data directory not found" in capsys.readouterr().err


def test_a_different_run_in_the_run_dir_names_the_flag(tiny_root, tmp_path, capsys):
    base = ["-q", "train", "--data", str(tiny_root), *SMALL_SETS, "--max-epochs", "1", "--no-progress",
            "--run-dir", str(tmp_path / "run")]
    assert main(base) == 0
    assert main([*base, "--set", "learning_rate=0.01"]) == 2
    err = capsys.readouterr().err
    assert "holds a different run" in err and "pass a new --run-dir" in err and "run_dir" not in err


@pytest.mark.parametrize("name", ["train", "valid", "item_info"])
def test_truncated_parquet_is_named(tiny_copy, tmp_path, capsys, name):
    path = tiny_copy / "MicroLens_1M_x1" / f"{name}.parquet"
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    assert main(["train", "--data", str(tiny_copy), "--run-dir", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert f"{path}: not a readable parquet file (truncated or corrupt?)" in err
    assert not (tmp_path / "r").exists()


def test_bad_numbers_are_usage_errors(tiny_root, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["train", "--data", str(tiny_root), "--max-epochs", "0"])
    assert exit_info.value.code == 2
    assert "--max-epochs: must be a positive integer, got '0'" in capsys.readouterr().err


def test_models_lists_the_registry(capsys):
    assert main(["models"]) == 0
    from ctr_eval.models import list_models

    assert capsys.readouterr().out.split() == list_models() and "din" in list_models()


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "ctr_eval.cli", *args]


@pytest.mark.slow
def test_killed_run_resumes_to_the_same_result(tiny_root, tmp_path):
    args = ["-q", "train", "--data", str(tiny_root), *SMALL_SETS, "--max-epochs", "3", "--no-progress"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    subprocess.run(_cli(*args, "--run-dir", str(tmp_path / "straight")), check=True, env=env,
                   capture_output=True)
    killed = tmp_path / "killed"
    proc = subprocess.Popen(_cli(*args, "--run-dir", str(killed)), env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while not (killed / LAST_CHECKPOINT).exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    first = torch.load(killed / LAST_CHECKPOINT, weights_only=False)["state"]["epoch"]
    assert first < 3 and not (killed / RESULT_FILE).exists()
    subprocess.run(_cli(*args, "--run-dir", str(killed)), check=True, env=env, capture_output=True)
    a = json.loads((tmp_path / "straight" / RESULT_FILE).read_text())
    b = json.loads((killed / RESULT_FILE).read_text())
    assert [h["valid_auc"] for h in b["history"]] == [h["valid_auc"] for h in a["history"]]
    assert b["valid_auc"] == a["valid_auc"]


def _mpirun_env(tmp_path: Path) -> tuple[list[str], dict[str, str]]:
    """accelerate's multi-CPU launch (mpirun underneath) and the env it needs here."""
    hostfile = tmp_path / "hostfile"
    hostfile.write_text("localhost slots=2\n")
    env = {**os.environ, "OMPI_ALLOW_RUN_AS_ROOT": "1", "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM": "1"}
    return [sys.executable, "-m", "accelerate.commands.launch", "--cpu", "--num_processes", "2",
            "--mpirun_hostfile", str(hostfile)], env


@pytest.mark.slow
@pytest.mark.parametrize("launcher", ["torchrun", "accelerate-mpirun"])
def test_two_cpu_processes_match_one(tiny_root, tmp_path, launcher):
    # P processes compute the one-process global-batch gradient (each scales its summed
    # loss by P / global batch rows; batch norm uses global statistics; dropout masks are
    # drawn for the global batch and sliced): only float summation order differs. That
    # noise is not quite invisible: a Linear bias in front of batch norm has a true gradient
    # of 0, so Adam turns float noise into lr-sized steps, and the running mean that trails
    # the bias makes evaluation differ a little (1e-4 AUC here) while training loss agrees.
    args = ["-q", "train", "--data", str(tiny_root), *SMALL_SETS, "--max-epochs", "3",
            "--no-progress", "--device", "cpu"]
    subprocess.run(_cli(*args, "--run-dir", str(tmp_path / "one")), check=True, capture_output=True)
    if launcher == "torchrun":  # what `accelerate launch --multi_gpu` runs too
        launch, env = [sys.executable, "-m", "torch.distributed.run", "--standalone",
                       "--nproc_per_node", "2"], None
    else:
        if shutil.which("mpirun") is None:
            pytest.skip("no mpirun on this machine (Debian: apt-get install openmpi-bin)")
        launch, env = _mpirun_env(tmp_path)
    two = subprocess.run([*launch, "-m", "ctr_eval.cli", *args, "--run-dir", str(tmp_path / "two")],
                         capture_output=True, text=True, env=env)
    assert two.returncode == 0, two.stderr[-3000:]
    a = json.loads((tmp_path / "one" / RESULT_FILE).read_text())
    b = json.loads((tmp_path / "two" / RESULT_FILE).read_text())
    assert (a["num_processes"], b["num_processes"]) == (1, 2)
    assert a["config"]["net_dropout"] > 0 and a["config"]["attention_dropout"] > 0
    assert [h["train_samples"] for h in b["history"]] == [h["train_samples"] for h in a["history"]]
    for h1, h2 in zip(a["history"], b["history"]):
        assert h2["train_bce"] == pytest.approx(h1["train_bce"], abs=1e-5)
        assert h2["valid_auc"] == pytest.approx(h1["valid_auc"], abs=1e-3)


def test_bf16_trains_under_autocast_and_fp16_needs_a_gpu(tiny_root, tmp_path):
    # Meant for GPUs; CPU bf16 autocast runs the same code paths (dtype mixing in the exact
    # attention, the float32 loss). One process per precision: Accelerate fixes the
    # precision for the life of a process.
    args = ["-q", "train", "--data", str(tiny_root), *SMALL_SETS, "--max-epochs", "2",
            "--no-progress", "--device", "cpu"]
    results = {}
    for precision in ("no", "bf16"):
        run_dir = tmp_path / precision
        subprocess.run(_cli(*args, "--mixed-precision", precision, "--run-dir", str(run_dir)),
                       check=True, capture_output=True)
        results[precision] = json.loads((run_dir / RESULT_FILE).read_text())
    full = [h["train_bce"] for h in results["no"]["history"]]
    losses = [h["train_bce"] for h in results["bf16"]["history"]]
    assert results["bf16"]["mixed_precision"] == "bf16"
    assert losses != full  # autocast did engage
    assert losses == pytest.approx(full, abs=0.02)
    assert 0.0 <= results["bf16"]["valid_auc"] <= 1.0 and results["bf16"]["valid_logloss"] < 1.0
    with pytest.raises(ValueError, match=r"mixed_precision='fp16' needs a GPU"):
        ctr_eval.evaluate(tiny_root, run_dir=tmp_path / "fp16", device="cpu", mixed_precision="fp16")
    assert not (tmp_path / "fp16").exists()
