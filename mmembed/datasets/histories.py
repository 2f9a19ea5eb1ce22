"""Train-period histories of a dataset, for the fusion heads that learn from behaviour.

The heads need each user's clicks before the train/eval split, and two files hold them:
``MicroLens_1M_x1/train.parquet`` (a window per row) and ``item_seq.parquet`` (a window
per user). The same window recurs: in MicroLens every train row of a user repeats the
user's history; in the synthetic set row k's history extends row k-1's. So, per user,
windows are compared oldest-first and one that equals another, or is the start of a
longer one, is dropped: what is left are the longest distinct windows (windows cut to L
at different times overlap without either containing the other; both stay).

At the real size (3.6M rows of 100 positions) the files hold far more than is kept, so
they are read in one streamed pass without ever holding the whole split:

1. batches of rows become int32 matrices (item ids must fit; they index item_info's rows)
   and are spilled to temporary files by a hash of the user, so that every window of a
   user lands in the same bucket;
2. each bucket, sized to fit a fixed memory budget, is reduced on its own (sorted as raw
   bytes, which orders non-negative ids numerically; a window right before its
   extensions is dropped);
3. the buckets' kept windows are written back and gathered in (user, history) order.

Peak memory is what is kept plus one bucket and one batch, whatever the files' size; when
everything fits one bucket nothing is spilled. The spill goes to the system's temporary
folder (``TMPDIR``): about 1.9 GB for MicroLens-1M, removed when the reading ends.

``max_histories`` caps what is kept: beyond it a seeded uniform sample of the windows
stays. A head draws a fixed budget of pairs (see :mod:`mmembed.fusion._train_loop`), so
windows beyond what that budget can visit only cost memory; a uniform sample keeps every
user's share of the clicks in expectation.
"""
from __future__ import annotations

import logging
import math
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import pyarrow as pa

from ctr_eval.checks import check_positive_int
from ctr_eval.format import (DatasetError, MissingFileError, check_columns, find_layout,
                             list_to_matrix, open_parquet, scalar_to_numpy)

logger = logging.getLogger(__name__)

HISTORY_COLUMNS = {"user_id": "int", "item_seq": "int_list"}
#: bytes of int64 history values decoded at once (one parquet batch)
BATCH_BYTES = 16 << 20
#: bytes of int32 windows one bucket holds while it is reduced
BUCKET_BYTES = 128 << 20
_INT32_MAX = np.iinfo(np.int32).max
#: windows the heads' histories keep (``mmembed.extract``): at 100 positions 800 MB of
#: int32. MicroLens-1M has about 1.1M and keeps all; a bigger log is sampled down, since a
#: fit's default budget (15,000 steps of 1,024 pairs) draws a few times fewer pairs than
#: 2M windows hold clicks.
HEAD_MAX_HISTORIES = 2_000_000


@dataclass
class TrainHistories:
    """Distinct train-period histories of a dataset.

    ``item_seq`` is (n, L) int32, left zero-padded, most recent item last (item ids, not
    rows); ``user_id`` (n,) int64 says whose each one is; rows are in (user, history)
    order. ``sources`` are the files read (train.parquet and item_seq.parquet, never valid
    or test), ``rows_read`` their rows in all, and ``distinct`` the longest distinct
    windows found before ``max_histories`` sampled them down to ``len(self)``.
    """

    user_id: np.ndarray
    item_seq: np.ndarray
    sources: tuple[Path, ...]
    rows_read: int
    distinct: int

    def __len__(self) -> int:
        return len(self.user_id)


def histories_fingerprint(data_dir: str | os.PathLike) -> str:
    """Cheap identity of the files :func:`load_train_histories` reads (train.parquet and
    item_seq.parquet: sizes and head and tail bytes); valid and test play no part."""
    from ctr_eval.format import files_digest

    layout = find_layout(data_dir)
    return files_digest([("train", layout.train), ("item_seq", layout.item_seq)])


def load_train_histories(data_dir: str | os.PathLike, max_len: int | None = None,
                         max_histories: int | None = None, seed: int = 0,
                         progress: bool = False) -> TrainHistories:
    """The train-period histories of the dataset at ``data_dir``, each kept once.

    Reads the ``item_seq`` column of ``MicroLens_1M_x1/train.parquet`` and
    ``item_seq.parquet`` (whichever exist; at least one must); valid.parquet and
    test.parquet are never opened. Per user, a window that equals another or is the
    oldest-first start of a longer one is dropped; empty windows too. ``max_len`` keeps
    the last ``max_len`` positions of each window; ``max_histories`` keeps a uniform
    sample (seeded by ``seed``) of that many windows when there are more.
    """
    check_positive_int("max_len", max_len, allow_none=True)
    check_positive_int("max_histories", max_histories, allow_none=True)
    layout = find_layout(data_dir)
    paths = tuple(p for p in (layout.train, layout.item_seq) if p.is_file())
    if not paths:
        raise MissingFileError(
            f"{layout.root}: no train histories: neither {layout.train} nor {layout.item_seq} "
            "exists (a head that learns from behaviour needs one of them)")
    files = [open_parquet(p) for p in paths]
    for path, pf in zip(paths, files):
        check_columns(path, pf.schema_arrow, HISTORY_COLUMNS)
    width = max(_kept_width(path, pf, max_len) for path, pf in zip(paths, files))
    total = sum(pf.metadata.num_rows for pf in files)
    logger.info("train histories: reading %s rows from %s", f"{total:,}", ", ".join(map(str, paths)))
    with _Buckets(n_buckets=math.ceil(total * width * 4 / BUCKET_BYTES), width=width) as buckets:
        with _progress_bar(total, progress) as bar:
            for path, pf in zip(paths, files):
                for read, users, seqs in _read_windows(path, pf, width):
                    buckets.add(users, seqs)
                    bar.update(read)
        users, seqs = buckets.reduce()
    distinct = len(users)
    if max_histories is not None and distinct > max_histories:
        keep = np.sort(np.random.default_rng([seed, 0x415]).choice(distinct, max_histories, replace=False))
        users, seqs = users[keep], seqs[keep]
    logger.info("train histories: %s kept (%s distinct windows; cap %s) of %s rows read",
                f"{len(users):,}", f"{distinct:,}", "none" if max_histories is None else f"{max_histories:,}",
                f"{total:,}")
    return TrainHistories(user_id=users, item_seq=seqs, sources=paths, rows_read=total, distinct=distinct)


# -- reading -----------------------------------------------------------------------------------
def _kept_width(path: Path, pf, max_len: int | None) -> int:
    """History positions kept from ``path``: its list length (from the first row), cut to
    ``max_len``."""
    if pf.metadata.num_rows == 0:
        return 0
    first = next(pf.iter_batches(batch_size=1, columns=["item_seq"]))
    width = list_to_matrix(first.column("item_seq"), path, "item_seq").shape[1]  # a null row: a clear error
    return width if max_len is None else min(width, max_len)


def _read_windows(path: Path, pf, width: int) -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
    """(rows read, users int64, windows int32 (n, ``width``)) of ``path`` by batches: each window's
    last ``width`` positions (left zero-padded when the file's are shorter), empty ones
    left out."""
    rows = max(1024, BATCH_BYTES // (8 * max(width, 1)))
    start, file_width = 0, None
    try:
        for batch in pf.iter_batches(batch_size=rows, columns=list(HISTORY_COLUMNS)):
            users = scalar_to_numpy(batch.column("user_id"), path, "user_id", start)
            matrix = list_to_matrix(batch.column("item_seq"), path, "item_seq", file_width, start)
            file_width = matrix.shape[1]
            matrix = matrix[:, max(0, file_width - width):]
            _check_int32(matrix, path, start)
            seqs = np.zeros((len(matrix), width), np.int32)
            seqs[:, width - matrix.shape[1]:] = matrix
            clicked = seqs.any(axis=1)
            start += batch.num_rows
            yield batch.num_rows, users[clicked], seqs[clicked]
    except (pa.ArrowException, OSError) as err:
        raise DatasetError(f"{path}: cannot read rows from {start} on "
                           f"(truncated or corrupt file?): {err}") from err


def _check_int32(matrix: np.ndarray, path: Path, start: int) -> None:
    if matrix.size and matrix.max() > _INT32_MAX:
        row = int(np.flatnonzero((matrix > _INT32_MAX).any(axis=1))[0])
        raise DatasetError(
            f"{path}: column 'item_seq' row {start + row}: item id {int(matrix[row].max())} exceeds "
            f"{_INT32_MAX}; item ids index item_info.parquet's rows (1..number of items)")


def _progress_bar(total: int, show: bool):
    from ctr_eval.progress import progress

    return progress(total=total, desc="train histories", unit="rows", enabled=show)


# -- buckets -----------------------------------------------------------------------------------
class _Buckets:
    """Windows partitioned by a hash of their user: in memory when one bucket holds them
    all, else spilled to temporary files (users int64, windows int32 raw)."""

    def __init__(self, n_buckets: int, width: int) -> None:
        # two open files a bucket: at most 256 buckets (bigger ones past 32 GB of windows)
        self.n, self.width = min(max(1, n_buckets), 256), width
        self.memory: list[tuple[np.ndarray, np.ndarray]] = []
        self.tmp: tempfile.TemporaryDirectory | None = None

    def __enter__(self) -> "_Buckets":
        if self.n > 1:
            self.tmp = tempfile.TemporaryDirectory(prefix="mmembed-histories-")
            self.files = [(open(self._path(b, "users"), "wb"), open(self._path(b, "seqs"), "wb"))
                          for b in range(self.n)]
        return self

    def __exit__(self, *exc) -> None:
        if self.tmp is not None:
            self._close()
            self.tmp.cleanup()

    def _path(self, bucket: int, kind: str) -> str:
        return os.path.join(self.tmp.name, f"{bucket}.{kind}")

    def _close(self) -> None:
        for handles in self.files:
            for handle in handles:
                handle.close()

    def add(self, users: np.ndarray, seqs: np.ndarray) -> None:
        if self.tmp is None:
            self.memory.append((users, seqs))
            return
        bucket = _user_hash(users) % np.uint64(self.n)
        order = np.argsort(bucket, kind="stable")
        bounds = np.searchsorted(bucket[order], np.arange(self.n + 1, dtype=np.uint64))
        for b in np.flatnonzero(np.diff(bounds)):
            rows = order[bounds[b]: bounds[b + 1]]
            users[rows].tofile(self.files[b][0])
            seqs[rows].tofile(self.files[b][1])

    def _load(self, bucket: int) -> tuple[np.ndarray, np.ndarray]:
        users = np.fromfile(self._path(bucket, "users"), np.int64)
        seqs = np.fromfile(self._path(bucket, "seqs"), np.int32).reshape(len(users), self.width)
        return users, seqs

    def reduce(self) -> tuple[np.ndarray, np.ndarray]:
        """Every bucket's longest distinct windows, in (user, history) order."""
        if self.tmp is None:
            users = np.concatenate([u for u, _ in self.memory]) if self.memory else np.zeros(0, np.int64)
            seqs = (np.concatenate([s for _, s in self.memory]) if self.memory
                    else np.zeros((0, self.width), np.int32))
            self.memory = []
            return longest_windows(users, seqs)
        self._close()
        sizes = []
        for bucket in range(self.n):  # each bucket's kept windows replace its spill files
            users, seqs = longest_windows(*self._load(bucket))
            users.tofile(self._path(bucket, "users"))
            seqs.tofile(self._path(bucket, "seqs"))
            sizes.append(len(users))
        users = np.concatenate([np.fromfile(self._path(b, "users"), np.int64) for b in range(self.n)])
        order = np.argsort(users, kind="stable")
        place = np.empty_like(order)
        place[order] = np.arange(len(order))
        seqs = np.empty((len(users), self.width), np.int32)
        start = 0
        for bucket, size in enumerate(sizes):  # one bucket's windows in memory at a time
            seqs[place[start: start + size]] = self._load(bucket)[1]
            start += size
        return users[order], seqs


def _user_hash(users: np.ndarray) -> np.ndarray:
    """A well-mixed uint64 of each user id (splitmix64's finaliser): sorted or clustered
    ids still spread evenly over the buckets."""
    with np.errstate(over="ignore"):
        x = users.astype(np.uint64) + np.uint64(0x9E3779B97F4A7C15)
        x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return x ^ (x >> np.uint64(31))


def longest_windows(users: np.ndarray, seqs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per user, drop each window that equals, or is the oldest-first start of, another
    window; the rest in (user, history) order. ``users`` int64 (n,), ``seqs`` (n, L) left
    zero-padded with non-negative ids."""
    if len(users) == 0:
        return users, seqs
    # Oldest first, left-aligned: a window that starts another is then its prefix, and in
    # lexicographic order a prefix sits right before the windows that extend it. Big-endian
    # bytes compare like the numbers, so one sort of raw rows gives that order.
    shift = np.argsort(seqs == 0, axis=1, kind="stable")
    aligned = np.take_along_axis(seqs, shift, axis=1)
    del shift
    keys = np.empty((len(users), 8 + 4 * seqs.shape[1]), np.uint8)
    signless = users.astype(np.int64).view(np.uint64) ^ np.uint64(1 << 63)  # negative ids first
    keys[:, :8] = signless.astype(">u8").view(np.uint8).reshape(-1, 8)
    keys[:, 8:] = aligned.astype(">i4").view(np.uint8).reshape(len(users), -1)
    order = np.argsort(keys.view(np.dtype((np.void, keys.shape[1]))).ravel(), kind="stable")
    del keys
    users, aligned, seqs = users[order], aligned[order], seqs[order]
    same_user = users[:-1] == users[1:]
    used = (aligned[:-1] != 0).sum(axis=1)
    beyond = np.arange(aligned.shape[1])[None, :] >= used[:, None]
    covered = same_user & ((aligned[:-1] == aligned[1:]) | beyond).all(axis=1)
    keep = np.append(~covered, True)
    return users[keep], seqs[keep]
