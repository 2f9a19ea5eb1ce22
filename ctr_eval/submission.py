"""The challenge's submission file: ``prediction.csv`` inside a zip.

The official baseline's ``prediction.py`` writes a CSV with an integer ``ID`` column (0..n-1,
the row order of ``test.parquet``) and one score column named after the task, then zips it
as ``prediction.csv`` at the archive's root. The task column is one of ``Task1``, ``Task2``
or ``Task1&2`` (the challenge page names the three leaderboards that way).
"""
from __future__ import annotations

import csv
import difflib
import io
import logging
import os
import zipfile
from pathlib import Path

import numpy as np

from ctr_eval.format import atomic_path

logger = logging.getLogger(__name__)

TASK_COLUMNS: tuple[str, ...] = ("Task1", "Task2", "Task1&2")
CSV_NAME = "prediction.csv"
ZIP_NAME = "submission.zip"


def check_task(task: str) -> str:
    """Return ``task`` if it names a submission column, else raise naming the valid ones."""
    if task in TASK_COLUMNS:
        return task
    near = difflib.get_close_matches(str(task), TASK_COLUMNS, n=1, cutoff=0.0)
    hint = f" (did you mean {near[0]!r}?)" if near else ""
    raise ValueError(f"unknown task {task!r}{hint}; valid tasks: {', '.join(TASK_COLUMNS)}")


def _check_scores(scores: np.ndarray) -> np.ndarray:
    scores = np.asarray(scores)
    if scores.ndim != 1:
        raise ValueError(f"scores must be one score per test row (1-D), got shape {scores.shape}")
    if scores.dtype.kind not in "fiu":
        raise TypeError(f"scores must be numeric, got dtype {scores.dtype}")
    scores = scores.astype(np.float64)
    bad = np.flatnonzero(~np.isfinite(scores) | (scores < 0.0) | (scores > 1.0))
    if bad.size:
        row = int(bad[0])
        raise ValueError(
            f"scores must be probabilities in [0, 1]; row {row} holds {float(scores[row])!r} "
            f"({bad.size} bad rows in all)"
        )
    return scores


def submission_csv_text(scores: np.ndarray, task: str = "Task1") -> str:
    """The CSV text: header ``ID,<task>``, then ``i,score`` for i = 0..n-1 in the given order."""
    task = check_task(task)
    scores = _check_scores(scores)
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["ID", task])
    # 9 significant digits keep float32 model outputs exact and the ranking unchanged.
    writer.writerows((i, f"{s:.9g}") for i, s in enumerate(scores.tolist()))
    return buf.getvalue()


def write_submission(
    scores: np.ndarray,
    out_dir: str | os.PathLike,
    task: str = "Task1",
    zip_name: str = ZIP_NAME,
) -> Path:
    """Write ``out_dir/prediction.csv`` and ``out_dir/<zip_name>`` (holding it); return the zip.

    Both files are written atomically. ``scores`` must be in test order, one per row.
    """
    text = submission_csv_text(scores, task)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    csv_path = out_dir / CSV_NAME
    with atomic_path(csv_path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    zip_path = out_dir / zip_name
    with atomic_path(zip_path) as tmp:
        with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED) as zf:
            zf.writestr(CSV_NAME, text)
    logger.info("wrote %s (%d rows, column %s) and %s", csv_path, len(scores), task, zip_path)
    return zip_path


def read_submission(zip_path: str | os.PathLike) -> tuple[str, np.ndarray]:
    """Read a submission zip back: (task column, scores in ID order). Checks the format."""
    zip_path = Path(zip_path)
    if not zip_path.is_file():
        raise FileNotFoundError(f"submission zip not found: {zip_path}")
    with zipfile.ZipFile(zip_path) as zf:
        names = zf.namelist()
        if names != [CSV_NAME]:
            raise ValueError(f"{zip_path}: expected exactly one member {CSV_NAME!r}, found {names}")
        text = zf.read(CSV_NAME).decode("utf-8")
    rows = list(csv.reader(io.StringIO(text)))
    if not rows or len(rows[0]) != 2 or rows[0][0] != "ID":
        raise ValueError(f"{zip_path}: header must be 'ID,<task>', got {rows[:1]}")
    task = check_task(rows[0][1])
    ids = np.array([int(r[0]) for r in rows[1:]], dtype=np.int64)
    if not np.array_equal(ids, np.arange(len(ids))):
        raise ValueError(f"{zip_path}: ID column must be 0..{len(ids) - 1} in order")
    scores = np.array([float(r[1]) for r in rows[1:]], dtype=np.float64)
    return task, _check_scores(scores)
