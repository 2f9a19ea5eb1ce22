"""Public entry points: ``evaluate`` (train + validate) and ``predict`` (submission zip)."""
from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch

from ctr_eval._runtime import RunOptions, make_accelerator, predict_probs, wants_cpu
from ctr_eval.checks import check_positive_int
from ctr_eval.config import config_hash, config_to_dict, resolve_config
from ctr_eval.data import ItemTable, add_task2_features, check_ids, load_item_table, load_split
from ctr_eval.format import write_json
from ctr_eval.models import build_model
from ctr_eval.submission import check_task, write_submission
from ctr_eval.train import BEST_CHECKPOINT, ITEM_TABLE_FILE, RUN_FILE, Trainer

logger = logging.getLogger(__name__)

__all__ = ["evaluate", "predict", "describe_item_info"]


def describe_item_info(item_info: Any, dataset_item_info: str = "MicroLens_1M_x1/item_info.parquet") -> str:
    """A short human-readable note of where the item embedding came from (kept in results)."""
    if item_info is None:
        return f"dataset: {dataset_item_info}"
    if isinstance(item_info, (str, os.PathLike)):
        return f"file: {Path(item_info).resolve()}"
    if isinstance(item_info, (np.ndarray, torch.Tensor)):
        arr = item_info.detach().cpu().numpy() if isinstance(item_info, torch.Tensor) else item_info
        digest = hashlib.sha256(np.ascontiguousarray(arr).tobytes()).hexdigest()[:16]
        return f"array: shape {tuple(arr.shape)} {arr.dtype}, sha256 {digest}"
    raise TypeError(
        f"item_info must be None, a parquet path or an (N+1, 128) float32 array, got {type(item_info).__name__}"
    )


def evaluate(
    data_dir: str | os.PathLike,
    item_info: str | os.PathLike | np.ndarray | None = None,
    model: str = "din",
    task1: bool | None = None,
    run_dir: str | os.PathLike | None = None,
    max_epochs: int | None = None,
    device: str | None = None,
    mixed_precision: str = "no",
    progress: bool = True,
    eval_batch_size: int | None = None,
    num_threads: int | None = None,
    train_rows: int | None = None,
    codes: str | os.PathLike | np.ndarray | None = None,
    **overrides: Any,
) -> dict[str, Any]:
    """Train ``model`` on the dataset's train split and score it on the valid split.

    ``data_dir``: the dataset root (holding MicroLens_1M_x1/) or that folder itself.
    ``item_info``: None (the dataset's own item_info.parquet), another item_info parquet,
    or an (N+1, 128) float32 array replacing only the embedding column (row i = item i,
    row 0 zero). ``task1``: Task 1 mode, the challenge's fixed DIN (default: True for
    "din"); then only the five tunables may be overridden. ``run_dir``: where the run's
    files go; a run dir holding an unfinished run of the same config and embedding is
    resumed. With None the run uses a temporary folder that is deleted when it ends (the
    result's ``run_dir`` is then None: pass a folder to keep the model for ``predict``). ``max_epochs`` caps ``config.epochs`` and is
    recorded. ``device`` None/"cpu"/"cuda"; ``mixed_precision`` "no"/"bf16"/"fp16"
    (autocast, for GPUs; bf16 also runs on CPU); ``num_threads``: torch CPU threads
    (default: cores / processes). ``train_rows``: train on that many train rows drawn at
    random (seed 0; the same rows for every table and seed) instead of all, for quick
    comparisons such as the demo; recorded in the result and the run dir. ``codes``:
    semantic-ID codes for a Task 2 config with ``item_codes=True`` (an item_codes.parquet
    or an (N+1, L) int array; default: the item_codes.parquet beside ``item_info`` or in
    the dataset's MicroLens_1M_x1/). The Task 2 features (``item_codes``, ``item_levels``,
    ``user_id``: config keys) are read by :func:`ctr_eval.data.add_task2_features`. All
    inputs are checked before anything is trained or written.

    Returns a dict with valid_auc, valid_logloss (best epoch), best_epoch, epochs_run,
    history, config, config_hash, train_samples_per_s, embedding_source, run_dir, ...
    (the same content as run_dir/result.json).
    """
    options = RunOptions(max_epochs=max_epochs, device=device, mixed_precision=mixed_precision,
                         progress=progress, eval_batch_size=eval_batch_size, num_threads=num_threads)
    options.check()
    check_positive_int("train_rows", train_rows, allow_none=True)
    cfg = resolve_config(model, task1=task1, **overrides)
    task1 = (model == "din") if task1 is None else bool(task1)
    table = load_item_table(data_dir, item_info)
    source = describe_item_info(item_info, table.source)
    train = load_split(data_dir, "train", max_len=cfg.max_len)
    valid = load_split(data_dir, "valid", max_len=cfg.max_len)
    for name, split in (("train", train), ("valid", valid)):
        if split.label is None:
            raise ValueError(f"{data_dir}: the {name} split has no label column; training needs labels")
        check_ids(split, table, num_levels=cfg.num_levels)
    table = add_task2_features(table, data_dir, cfg, train, codes=codes, item_info=item_info)
    if cfg.user_id and valid.user_id is None:
        raise ValueError(f"user_id=True needs a user_id column in the valid split ({valid.path}); it has none")
    meta = {"task1": task1, "embedding_source": source, "data_dir": str(Path(data_dir).resolve())}
    if cfg.task2_features:
        meta["task2_features"] = cfg.task2_features
    if train_rows is not None and train_rows < len(train):  # as many or more: all rows, as without
        meta["train_rows"] = f"{train_rows} of {len(train)} (random, seed 0)"
        train = train.subset(train_rows)
    if run_dir is not None:
        return Trainer(cfg, table, train, valid, run_dir, options, meta).fit()
    with _shared_temp_dir(f"ctr_eval_{model}_", options) as temp_dir:
        result = Trainer(cfg, table, train, valid, temp_dir, options, meta).fit()
    return {**result, "run_dir": None}


@contextlib.contextmanager
def _shared_temp_dir(prefix: str, options: RunOptions) -> Iterator[str]:
    """A fresh temporary folder, the same one on every process of a multi-process run,
    removed by the main process when the block ends (after every process is done)."""
    from accelerate import PartialState
    from accelerate.utils import broadcast_object_list

    state = PartialState(cpu=wants_cpu(options))  # the same process group the run will use
    holder = [tempfile.mkdtemp(prefix=prefix) if state.is_main_process else None]
    if state.num_processes > 1:
        broadcast_object_list(holder, from_process=0)
    try:
        yield holder[0]
    finally:
        state.wait_for_everyone()
        if state.is_main_process:
            shutil.rmtree(holder[0], ignore_errors=True)


def load_run(run_dir: str | os.PathLike) -> tuple[str, Any, ItemTable, torch.nn.Module]:
    """(model name, config, item table, model with the best weights) of a finished run dir."""
    run_dir = Path(run_dir)
    for name in (RUN_FILE, BEST_CHECKPOINT, ITEM_TABLE_FILE):
        if not (run_dir / name).is_file():
            raise FileNotFoundError(
                f"{run_dir / name} not found: {run_dir} is not a ctr_eval run dir with a trained "
                "model (run `ctr-eval train --run-dir ...` first)"
            )
    record = json.loads((run_dir / RUN_FILE).read_text(encoding="utf-8"))
    model_name = record["model"]
    fields = {k: v for k, v in record["config"].items() if k != "model"}
    cfg = resolve_config(model_name, task1=False, **fields)
    if config_hash(cfg) != record["config_hash"]:
        raise ValueError(f"{run_dir / RUN_FILE}: config does not match its recorded hash {record['config_hash']}")
    saved = torch.load(run_dir / ITEM_TABLE_FILE, map_location="cpu", weights_only=False)
    table = ItemTable.from_dict(saved, source=f"{run_dir / ITEM_TABLE_FILE}")
    if table.fingerprint() != record["item_table_fingerprint"]:
        raise ValueError(f"{run_dir / ITEM_TABLE_FILE} does not match the fingerprint in {RUN_FILE}")
    best = torch.load(run_dir / BEST_CHECKPOINT, map_location="cpu", weights_only=False)
    net = build_model(model_name, cfg, table)
    net.load_state_dict(best["model"])
    return model_name, cfg, table, net


def predict(
    run_dir: str | os.PathLike,
    data_dir: str | os.PathLike,
    task: str = "Task1",
    out_dir: str | os.PathLike | None = None,
    split: str = "test",
    device: str | None = None,
    progress: bool = True,
    batch_size: int | None = None,
) -> Path:
    """Score ``split`` (default test) with the run's best model; write the submission.

    Writes ``prediction.csv`` (ID 0..n-1 in the split's row order, and the ``task`` column:
    Task1, Task2 or Task1&2) and ``submission.zip`` holding it into ``out_dir`` (default
    ``run_dir``); returns the zip's path.
    """
    task = check_task(task)
    model_name, cfg, table, net = load_run(run_dir)
    rows = load_split(data_dir, split, max_len=cfg.max_len)
    check_ids(rows, table, num_levels=cfg.num_levels)
    options = RunOptions(device=device, progress=progress)
    acc = make_accelerator(options)
    unwrapped = acc.prepare_model(net, evaluation_mode=True)  # placed on the device, no DDP wrapper
    probs = predict_probs(acc, unwrapped, rows, batch_size or max(cfg.batch_size, 4096), progress=progress)
    out = Path(out_dir) if out_dir is not None else Path(run_dir)
    zip_path = out / "submission.zip"
    if acc.is_main_process:
        zip_path = write_submission(probs, out, task)
        write_json(out / "prediction_meta.json", {
            "run_dir": str(Path(run_dir).resolve()), "model": model_name, "config_hash": config_hash(cfg),
            "config": config_to_dict(cfg), "data_dir": str(Path(data_dir).resolve()), "split": split,
            "task": task, "rows": int(len(probs))})
    acc.wait_for_everyone()
    return zip_path
