"""What the benches share: a keyed results file that resumes, the usual argument groups,
cached synthetic data, peak memory and gradient moments.

A bench runs as ``python bench/NAME.py``; Python puts bench/ first on ``sys.path``, so
``from benchlib import ...`` needs no path set-up. Only the standard library and numpy are
imported here at module level: FuxiCTR's venv (bench/_fuxictr_runner.py) imports this too.
"""
from __future__ import annotations

import argparse
import contextlib
import fcntl
import json
import os
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np

DEFAULT_CACHE = Path.home() / ".cache" / "mmembed"
BENCH_CACHE = DEFAULT_CACHE / "bench"
SPLIT_DIR = "MicroLens_1M_x1"
SPLIT_FILES = ("train.parquet", "valid.parquet", "item_info.parquet")
DIN_MAX_LEN = 64  # the challenge DIN's history length (the last 64 positions)

__all__ = ["BENCH_CACHE", "DEFAULT_CACHE", "ResultsFile", "SPLIT_DIR", "add_batch_size", "add_data_args", "add_random_batch_args",
           "dataset_split", "gradient_moments", "logger", "make_bench_root", "peak_rss_mb", "random_din_batches", "synthetic_root"]


def logger(name: str) -> Callable[[str], None]:
    """``log(message)`` printing ``[name HH:MM:SS] message`` to stderr, flushed."""
    def log(message: str) -> None:
        print(f"[{name} {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)
    return log


# -- results kept between runs ------------------------------------------------------------------
class ResultsFile:
    """Finished results in one JSON object, keyed by strings; a killed bench resumes from it.

    Every write re-reads the file under an exclusive lock (``.NAME.lock`` beside it), changes
    one key and replaces the file atomically, so two benches filling one file side by side
    lose nothing and a reader never sees half a file.
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)

    def read(self) -> dict[str, Any]:
        if not self.path.is_file():
            return {}
        try:
            stored = json.loads(self.path.read_text())
        except json.JSONDecodeError as err:
            raise SystemExit(f"results file {self.path} is not valid JSON ({err}); "
                             "move it away or pass another --results-file") from None
        if not isinstance(stored, dict):
            raise SystemExit(f"results file {self.path} holds a {type(stored).__name__}, not a JSON object "
                             "keyed by result; pass another --results-file")
        return stored

    def __contains__(self, key: str) -> bool:
        return key in self.read()

    def get(self, key: str, default: Any = None) -> Any:
        return self.read().get(key, default)

    def put(self, key: str, value: Any) -> None:
        """Store ``value`` under ``key`` (replacing what was there)."""
        with self._locked() as stored:
            stored[key] = value

    def merge(self, key: str, fields: dict[str, Any]) -> dict[str, Any]:
        """Add ``fields`` to the dict under ``key`` (kept fields stay); the merged dict."""
        with self._locked() as stored:
            stored[key] = {**stored.get(key, {}), **fields}
            return stored[key]

    @contextlib.contextmanager
    def _locked(self) -> Iterator[dict[str, Any]]:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path.with_name(f".{self.path.name}.lock"), "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            stored = self.read()
            yield stored
            tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
            tmp.write_text(json.dumps(stored, indent=1, default=str) + "\n")
            os.replace(tmp, self.path)


# -- argument groups ----------------------------------------------------------------------------
def add_batch_size(parser: argparse.ArgumentParser, default: int | None, help: str | None = None) -> None:
    """``--batch-size`` (rows per training step), checked >= 1."""
    def positive(text: str) -> int:
        value = int(text)
        if value < 1:
            raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
        return value

    parser.add_argument("--batch-size", type=positive, default=default,
                        help=help or f"rows per training step (default {default})")


def add_data_args(parser: argparse.ArgumentParser, scale: str = "small") -> None:
    """The data a bench reads: --data-dir, else cached synthetic --scale / --data-seed."""
    group = parser.add_argument_group("data")
    group.add_argument("--data-dir", default=None, help="challenge-layout root (default: synthetic data)")
    group.add_argument("--scale", default=scale, help=f"synthetic scale without --data-dir (default {scale})")
    group.add_argument("--data-seed", type=int, default=0, help="synthetic generator seed")
    group.add_argument("--cache-dir", default=str(BENCH_CACHE),
                       help="where synthetic data and bench copies are kept")


def dataset_split(args: argparse.Namespace) -> Path:
    """The split folder (train/valid/item_info) of ``add_data_args``' choice; synthetic data
    is generated once (no covers) and reused."""
    if args.data_dir:
        root = Path(args.data_dir)
        split = root / SPLIT_DIR if (root / SPLIT_DIR).is_dir() else root
        for name in SPLIT_FILES:
            if not (split / name).is_file():
                raise SystemExit(f"{split / name} not found (--data-dir must be a challenge-layout "
                                 f"root or its {SPLIT_DIR} folder)")
        return split
    return synthetic_root(args.cache_dir, args.scale, args.data_seed) / SPLIT_DIR


def synthetic_root(cache_dir: str | Path, scale: str, seed: int = 0, with_images: bool = False) -> Path:
    """``cache_dir/synthetic-SCALE-seedN[-covers]``: generated on first use into a temporary
    folder renamed into place, so an interrupted generation is never taken for data."""
    name = f"synthetic-{scale}-seed{seed}" + ("-covers" if with_images else "")
    root = Path(cache_dir) / name
    if (root / SPLIT_DIR / "item_info.parquet").is_file():
        return root
    from mmembed.datasets.synthetic import generate

    logger("bench")(f"generating synthetic '{scale}' data (seed {seed}, "
                    f"{'with' if with_images else 'no'} covers) in {root}")
    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=name + ".", dir=root.parent))
    generate(tmp, scale=scale, seed=seed, progress=False, with_images=with_images, overwrite=True)
    if root.exists():
        shutil.rmtree(root)
    tmp.rename(root)
    return root


def write_atomically(path: Path, write: Any) -> None:
    """write(tmp) then rename onto path: a bench started beside a running one rewrites the
    shared bench copy without a reader ever seeing half a file."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    write(tmp)
    tmp.replace(path)


def real_positions(table: Any, max_len: int = DIN_MAX_LEN) -> Any:
    """Per row, how many of the last ``max_len`` history positions hold an item (not 0)."""

    seq = table.column("item_seq").combine_chunks()
    width = len(seq[0]) if len(seq) else 0
    flat = seq.flatten().to_numpy(zero_copy_only=False).reshape(-1, width)
    return (flat[:, -max_len:] != 0).sum(axis=1)


def make_bench_root(split_dir: Path, out_root: Path, train_rows: int, valid_rows: int,
                    full_histories: bool = False) -> dict:
    """Write out_root/MicroLens_1M_x1 with the first rows of train/valid (with
    ``full_histories``: the first rows whose last 64 history positions all hold an item);
    return row counts and the mean number of real history positions the DIN sees."""
    import pyarrow.parquet as pq

    dst = out_root / SPLIT_DIR
    dst.mkdir(parents=True, exist_ok=True)
    counts: dict[str, Any] = {}
    for name, limit in (("train", train_rows), ("valid", valid_rows)):
        table = pq.read_table(split_dir / f"{name}.parquet")
        if "label" not in table.column_names:
            raise ValueError(f"{split_dir / (name + '.parquet')}: no label column")
        if full_histories:
            real = real_positions(table)
            keep = (real == DIN_MAX_LEN).nonzero()[0]
            if limit and len(keep) < limit:
                raise SystemExit(f"{split_dir / (name + '.parquet')}: only {len(keep)} rows have "
                                 f"{DIN_MAX_LEN} real history positions; ask for fewer rows")
            table = table.take(keep[:limit] if limit else keep)
        if limit and limit < table.num_rows:
            table = table.slice(0, limit)
        write_atomically(dst / f"{name}.parquet", lambda tmp: pq.write_table(table, tmp))
        counts[name] = table.num_rows
        if name == "train":
            counts["mean_real_positions"] = round(float(real_positions(table).mean()), 2)
            counts["history_len"] = len(table.column("item_seq")[0]) if table.num_rows else 0
    write_atomically(dst / "item_info.parquet",
                     lambda tmp: shutil.copyfile(split_dir / "item_info.parquet", tmp))
    counts["items"] = pq.read_metadata(dst / "item_info.parquet").num_rows - 1
    return counts


def add_random_batch_args(parser: argparse.ArgumentParser) -> None:
    """--items / --positions of ``random_din_batches`` (default: the real data's shape)."""
    group = parser.add_argument_group("random batches")
    group.add_argument("--items", type=int, default=91_717, help="items in the random table")
    group.add_argument("--positions", type=int, default=64, help="history positions, all filled")


def random_din_batches(items: int, positions: int, batch_size: int, cfg: Any):
    """(ItemTable, batch(i), positions) of random items with every history position filled:
    the peer's measuring shape (no padding, many distinct items); batch i is the same on
    every call."""
    import torch

    from ctr_eval.data import ItemTable

    gen = torch.Generator().manual_seed(0)
    tags = torch.randint(1, 11_740, (items + 1, 5), generator=gen)
    emb = torch.randn(items + 1, cfg.pretrained_dim, generator=gen) * 0.1
    tags[0], emb[0] = 0, 0.0
    table = ItemTable(tags=tags, emb=emb, source="random")

    def batch(i: int) -> dict[str, Any]:
        g = torch.Generator().manual_seed(1000 + i)
        return {"item_id": torch.randint(1, items + 1, (batch_size,), generator=g),
                "item_seq": torch.randint(1, items + 1, (batch_size, positions), generator=g),
                "likes_level": torch.randint(0, cfg.num_levels, (batch_size,), generator=g),
                "views_level": torch.randint(0, cfg.num_levels, (batch_size,), generator=g),
                "label": torch.randint(0, 2, (batch_size,), generator=g).float()}

    return table, batch, positions


# -- measurements -------------------------------------------------------------------------------
def peak_rss_mb() -> float:
    """This process's peak resident memory in MB since its exec.

    ``getrusage(RUSAGE_SELF).ru_maxrss`` is not that on Linux: the high-water mark carries
    over fork and exec, so a child of a parent holding 6 GB reports at least 6 GB. ``VmHWM``
    in /proc/self/status is the process's own peak (ru_maxrss where /proc is missing).
    """
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024.0  # kB
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: KiB; a floor elsewhere


def gradient_moments(model: Any, draws: int, loss_of_draw: Callable[[], Any]):
    """``draws`` times: zero the gradients, ``loss_of_draw()`` (a fresh forward in training
    mode), backward. Returns (losses, {name: sum of gradients}, {name: sum of squares}) in
    float64; no optimizer step is taken."""
    params = dict(model.named_parameters())
    sums = {k: np.zeros(p.shape) for k, p in params.items()}
    squares = {k: np.zeros(p.shape) for k, p in params.items()}
    losses = []
    model.train()
    for _ in range(draws):
        model.zero_grad(set_to_none=True)
        loss = loss_of_draw()
        loss.backward()
        losses.append(float(loss.detach()))
        for k, p in params.items():
            g = p.grad.detach().double().cpu().numpy() if p.grad is not None else 0.0
            sums[k] += g
            squares[k] += np.square(g)
    return np.array(losses), sums, squares
