"""Progress output: bars on a terminal, plain lines in logs, nothing under -q."""
from __future__ import annotations

import io
import os
import subprocess
import sys

import pytest

from ctr_eval import progress as progress_module
from ctr_eval.progress import LineProgress, progress, quiet


def test_line_progress_writes_plain_lines_and_a_closing_one():
    out = io.StringIO()
    with LineProgress(None, total=40, desc="train", unit="step", every=0.0, stream=out) as bar:
        for _ in range(4):
            bar.update(10)
    lines = out.getvalue().splitlines()
    assert "\r" not in out.getvalue() and len(lines) == 5
    assert lines[0].startswith("train: 10/40 step (25%), ") and lines[0].endswith(" s")
    assert lines[-1].startswith("train: done, 40/40 step (100%)")


def test_line_progress_over_an_iterable_without_a_total():
    out = io.StringIO()
    seen = list(LineProgress(iter(range(3)), total=None, desc="read", unit="batch", every=0.0, stream=out))
    assert seen == [0, 1, 2]
    assert out.getvalue().splitlines()[-1].startswith("read: done, 3 batch, ")


def test_quick_work_in_a_log_says_nothing(capfd):
    for _ in progress(range(1000), desc="quick"):  # stderr here is not a terminal
        pass
    assert capfd.readouterr().err == ""


def test_a_log_gets_lines_not_redrawn_bars(capfd, monkeypatch):
    monkeypatch.setattr(progress_module, "LINE_EVERY_S", 0.0)
    bar = progress(range(3), desc="epoch 1", unit="batch")
    assert isinstance(bar, LineProgress)
    list(bar)
    err = capfd.readouterr().err
    assert "\r" not in err and err.splitlines()[0].startswith("epoch 1: 1/3 batch (33%)")


def test_quiet_and_disabled_progress_print_nothing(capfd, monkeypatch):
    monkeypatch.setattr(progress_module, "LINE_EVERY_S", 0.0)
    with quiet():
        with progress(total=5, desc="inner") as bar:
            bar.update(5)
        with quiet(False):  # a no-op inside: still quiet
            list(progress(range(5), desc="inner"))
    list(progress(range(5), desc="off", enabled=False))
    assert capfd.readouterr().err == ""
    assert not progress_module.is_quiet()


@pytest.mark.parametrize("quiet_flag", [True, False])
def test_a_trained_head_obeys_q_and_writes_no_bar_into_a_log(tiny_root, tmp_path, quiet_flag, monkeypatch):
    spec = f"precomputed:path={tiny_root}/item_emb.parquet,column=item_emb_d128_v"
    argv = [sys.executable, "-m", "mmembed.cli", *(["-q"] if quiet_flag else []), "extract", str(tiny_root),
            "--encoder", spec + "1", "--encoder", spec + "2",
            "--fusion", '{"name": "contrastive", "max_steps": 60, "eval_every": 20, "batch_size": 64}',
            "--out", str(tmp_path / "out"), "--cache-dir", str(tmp_path / "cache")]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "MMEMBED_PROGRESS_EVERY_S": "0"})
    assert done.returncode == 0, done.stderr
    assert "\r" not in done.stderr  # never a redrawn bar in a log
    if quiet_flag:
        assert "steps" not in done.stderr and "%" not in done.stderr
    else:  # a line per update at this setting, the head's steps among them
        assert any(line.startswith("contrastive steps: ") for line in done.stderr.splitlines())
