"""The submission file: prediction.csv (ID + task column, test order) inside a zip."""
from __future__ import annotations

import csv
import io
import zipfile

import numpy as np
import pytest

from ctr_eval.submission import check_task, read_submission, submission_csv_text, write_submission


def test_submission_zip_holds_prediction_csv_in_order(tmp_path):
    scores = np.random.default_rng(0).random(1000).astype(np.float32)
    zip_path = write_submission(scores, tmp_path / "out", task="Task1")
    assert zip_path == tmp_path / "out" / "submission.zip"
    with zipfile.ZipFile(zip_path) as zf:
        assert zf.namelist() == ["prediction.csv"]
        rows = list(csv.reader(io.StringIO(zf.read("prediction.csv").decode())))
    assert rows[0] == ["ID", "Task1"]
    assert [int(r[0]) for r in rows[1:]] == list(range(1000))
    # float32 scores survive the text round trip exactly
    assert np.array_equal(np.array([float(r[1]) for r in rows[1:]], dtype=np.float32), scores)
    assert (tmp_path / "out" / "prediction.csv").read_text() == zf_text(zip_path)
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["prediction.csv", "submission.zip"]


def zf_text(zip_path) -> str:
    with zipfile.ZipFile(zip_path) as zf:
        return zf.read("prediction.csv").decode()


@pytest.mark.parametrize("task", ["Task1", "Task2", "Task1&2"])
def test_read_submission_round_trip_for_each_task(tmp_path, task):
    scores = np.array([0.0, 0.25, 1.0, 0.5])
    task_read, back = read_submission(write_submission(scores, tmp_path, task=task))
    assert task_read == task
    assert np.array_equal(back, scores)


def test_bad_task_is_refused_with_a_suggestion():
    with pytest.raises(ValueError, match=r"unknown task 'task1' \(did you mean 'Task1'\?\); valid tasks: "
                                         r"Task1, Task2, Task1&2"):
        check_task("task1")


@pytest.mark.parametrize("bad, message", [
    (np.array([0.1, np.nan, 0.2]), r"row 1 holds nan"),
    (np.array([0.1, 0.2, 1.5]), r"row 2 holds 1.5"),
    (np.array([-0.1]), r"row 0 holds -0.1"),
])
def test_scores_outside_probabilities_are_refused(tmp_path, bad, message):
    with pytest.raises(ValueError, match=message):
        write_submission(bad, tmp_path)
    assert not list(tmp_path.iterdir())


def test_scores_must_be_one_dimensional():
    with pytest.raises(ValueError, match=r"one score per test row \(1-D\), got shape \(2, 2\)"):
        submission_csv_text(np.zeros((2, 2)))


def test_read_submission_rejects_wrong_layout(tmp_path):
    path = tmp_path / "bad.zip"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("prediction.csv", "ID,Task1\n0,0.5\n2,0.1\n")
    with pytest.raises(ValueError, match=r"ID column must be 0..1 in order"):
        read_submission(path)
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("other.csv", "ID,Task1\n")
    with pytest.raises(ValueError, match=r"expected exactly one member 'prediction.csv'"):
        read_submission(path)
    with pytest.raises(FileNotFoundError, match="submission zip not found"):
        read_submission(tmp_path / "missing.zip")
