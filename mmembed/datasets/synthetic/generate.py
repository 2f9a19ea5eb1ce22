"""``generate``: write a synthetic MicroLens dataset root from the known generative model."""
from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from ctr_eval.progress import progress as progress_of

from ctr_eval.checks import check_positive_int
from ctr_eval.format import EMBEDDING_DIM, SPLIT_DIR_NAME, SPLITS, atomic_path

from . import behaviour, images, latent, text, writer
from .latent import LATENT_DIM, ItemTruth, rng_for
from .scales import SCALES, SyntheticScale

logger = logging.getLogger(__name__)

ORACLE_DIR = "oracle"
# Released 128-d embeddings: (name, noise on the content view, image-only weight, uses text).
RELEASED_VARIANTS = (
    ("v1", 0.8, 0.5),  # also item_info's item_emb_d128: modest quality
    ("v2", 1.2, 0.0),  # text-side content only, noisier
    ("v3", 0.4, 1.0),  # all content, least noisy
)


def _resolve_scale(scale: str | SyntheticScale) -> SyntheticScale:
    if isinstance(scale, SyntheticScale):
        return scale
    if not isinstance(scale, str):
        raise TypeError(f"scale must be a name or a SyntheticScale, got {type(scale).__name__}")
    if scale not in SCALES:
        raise ValueError(f"unknown scale {scale!r}; valid scales: {', '.join(SCALES)}")
    return SCALES[scale]


def released_embeddings(items: ItemTruth, seed: int) -> dict[str, np.ndarray]:
    """Content-only 128-d item vectors of graded quality; none sees the collab block."""
    rng = rng_for(seed, latent.STAGE_RELEASED)
    s = latent.block_slices()
    out = {}
    for name, noise, image_weight in RELEASED_VARIANTS:
        view = np.concatenate([items.latent[:, s["text_only"]], items.latent[:, s["shared"]],
                               image_weight * items.latent[:, s["image_only"]]], axis=1)
        view = view + noise * rng.standard_normal(view.shape)
        projection = rng.standard_normal((view.shape[1], EMBEDDING_DIM)) / np.sqrt(view.shape[1])
        emb = view @ projection + 0.1 * rng.standard_normal((len(view), EMBEDDING_DIM))
        out[name] = emb.astype(np.float32)
    return out


def _n_positive(n_rows: int) -> int:
    return int(round(behaviour.POSITIVE_RATE * n_rows))


def _write_table(table: pa.Table, path: Path) -> None:
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp, row_group_size=writer.ROW_GROUP_ROWS)


def _save_npy(array: np.ndarray, path: Path) -> None:
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        np.save(fh, array)


def _write_items(root: Path, items: ItemTruth, titles: list[str], tags: np.ndarray,
                 released: dict[str, np.ndarray]) -> None:
    n = len(titles)
    ids = np.arange(1, n + 1, dtype=np.int64)
    _write_table(pa.Table.from_arrays([
        pa.array(ids), pa.array(titles, type=pa.string()), writer.list_column(tags, pa.int64()),
        pa.array(items.likes_level), pa.array(items.views_level),
    ], schema=writer.ITEM_FEATURE_SCHEMA), root / "item_feature.parquet")
    padded_tags = np.vstack([np.zeros((1, tags.shape[1]), np.int64), tags])
    padded_emb = np.vstack([np.zeros((1, EMBEDDING_DIM), np.float32), released["v1"]])
    _write_table(pa.Table.from_arrays([
        pa.array(np.arange(n + 1, dtype=np.int64)), writer.list_column(padded_tags, pa.int64()),
        writer.list_column(padded_emb, pa.float32()),
    ], schema=writer.ITEM_INFO_SCHEMA), root / SPLIT_DIR_NAME / "item_info.parquet")
    _write_table(pa.Table.from_arrays(
        [pa.array(ids)] + [writer.list_column(released[k], pa.float32()) for k in released],
        schema=writer.item_emb_schema(len(released))), root / "item_emb.parquet")


def _rows_table(rows: behaviour.SplitRows, items: ItemTruth, with_label: bool) -> pa.Table:
    idx = rows.item_id - 1
    cols = [pa.array(rows.user_id), writer.list_column(rows.item_seq, pa.int64()),
            pa.array(items.likes_level[idx]), pa.array(items.views_level[idx]),
            pa.array(rows.item_id)]
    if with_label:
        cols.append(pa.array(rows.label))
    return pa.Table.from_arrays(cols, schema=writer.TRAIN_SCHEMA if with_label
                                else writer.TEST_SCHEMA)


def _remove_stale_images(root: Path, keep: str | None) -> None:
    """Delete covers of a previous run that this run will not rewrite."""
    folder, archive = root / "item_images", root / "item_images.zip"
    if keep != "folder" and folder.is_dir():
        logger.info("removing stale %s", folder)
        shutil.rmtree(folder)
    if keep != "zip" and archive.is_file():
        logger.info("removing stale %s", archive)
        archive.unlink()


def _write_images(root: Path, items: ItemTruth, scale: SyntheticScale, seed: int,
                  image_zip: bool, workers: int) -> int:
    rng = rng_for(seed, latent.STAGE_IMAGES)
    projection = images.image_projection(items.image_content.shape[1], rng)
    params = images.image_params(items.image_content, projection)
    stream = images.render_all(params, seed, scale.image_size, workers)
    if image_zip:
        with atomic_path(root / "item_images.zip") as tmp:
            return images.write_zip(stream, tmp)
    final = root / "item_images"
    staging = Path(tempfile.mkdtemp(prefix=".item_images.", dir=root))
    try:
        count = images.write_folder(stream, staging)
        umask = os.umask(0)
        os.umask(umask)
        staging.chmod(0o777 & ~umask)  # mkdtemp makes it private; give the usual mode
        if final.exists():
            shutil.rmtree(final)
        os.replace(staging, final)
    finally:
        if staging.exists():
            shutil.rmtree(staging)
    return count


def _check_seed(seed: Any) -> int:
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    return int(seed)


def _check_workers(workers: int | None) -> int:
    if workers is None:
        return min(2, os.cpu_count() or 1)
    return check_positive_int("workers", workers)


def _prepare_root(root: str | os.PathLike, overwrite: bool, image_zip: bool,
                  with_images: bool) -> Path:
    """Refuse an unusable or non-empty ``root`` (unless ``overwrite``); create its folders."""
    root = Path(root)
    if root.exists() and not root.is_dir():
        raise ValueError(f"root {root} exists and is not a directory")
    if root.is_dir() and any(root.iterdir()) and not overwrite:
        raise FileExistsError(
            f"root {root} is not empty; pass overwrite=True to replace a generated data set there"
        )
    if overwrite:
        _remove_stale_images(root, keep=("zip" if image_zip else "folder") if with_images else None)
    (root / SPLIT_DIR_NAME).mkdir(parents=True, exist_ok=True)
    (root / ORACLE_DIR).mkdir(parents=True, exist_ok=True)
    return root


def _item_stage(root: Path, cfg: SyntheticScale, seed: int) -> ItemTruth:
    """Draw the items, their titles, tags and released vectors; write the item files."""
    items = latent.make_items(cfg.n_items, seed)
    rng = rng_for(seed, latent.STAGE_TEXT)
    directions = text.topic_directions(items.text_content.shape[1], rng)
    logits = text.topic_logits(items.text_content, directions)
    titles = text.make_titles(items.text_content, directions, rng)
    tags = text.make_tags(logits, cfg.tag_vocab, rng)
    released = released_embeddings(items, seed)
    _write_items(root, items, titles, tags, released)
    return items


@dataclass
class _BehaviourStats:
    """What the behaviour stage hands on to the oracle and the summary."""

    user_vectors: np.ndarray  # (n_users + 1, LATENT_DIM), row 0 zero
    test_labels: list[np.ndarray] = field(default_factory=list)  # per chunk, in row order
    positives: dict[str, int] = field(default_factory=lambda: dict.fromkeys(SPLITS, 0))
    new_targets: dict[str, int] = field(default_factory=lambda: dict.fromkeys(SPLITS, 0))


def _open_row_sinks(stack: contextlib.ExitStack, root: Path) -> dict[str, pq.ParquetWriter]:
    """Parquet writers for the three splits and item_seq, each into an atomic temp path."""
    paths = {"train": root / SPLIT_DIR_NAME / "train.parquet", "valid": root / SPLIT_DIR_NAME / "valid.parquet",
             "test": root / SPLIT_DIR_NAME / "test.parquet", "item_seq": root / "item_seq.parquet"}
    tmp = {k: stack.enter_context(atomic_path(p)) for k, p in paths.items()}
    return {
        "train": stack.enter_context(pq.ParquetWriter(tmp["train"], writer.TRAIN_SCHEMA)),
        "valid": stack.enter_context(pq.ParquetWriter(tmp["valid"], writer.TRAIN_SCHEMA)),
        "test": stack.enter_context(pq.ParquetWriter(tmp["test"], writer.TEST_SCHEMA)),
        "item_seq": stack.enter_context(pq.ParquetWriter(tmp["item_seq"],
                                                         writer.ITEM_SEQ_SCHEMA)),
    }


def _simulate_users(items: ItemTruth, tables: tuple[behaviour.PopularityTable, ...],
                    cfg: SyntheticScale, seed: int, chunk: int,
                    start: int) -> tuple[np.ndarray, behaviour.ChunkResult]:
    """Draw the users of one chunk and simulate their rows; return (users, result)."""
    stop = min(start + cfg.user_chunk, cfg.n_users)
    users = latent.make_users(stop - start, seed, chunk)
    counts = {k: behaviour.allocate(getattr(cfg, f"n_{k}"), start, stop, cfg.n_users)
              for k in SPLITS}
    # Positives spread over chunks like rows, so each split has exactly 25% overall.
    pos = {k: behaviour.allocate(_n_positive(getattr(cfg, f"n_{k}")), start, stop,
                                 cfg.n_users) for k in SPLITS}
    result = behaviour.simulate_chunk(items, tables, users, start + 1, counts, pos,
                                      cfg, seed, chunk)
    return users, result


def _write_chunk(sinks: dict[str, pq.ParquetWriter], result: behaviour.ChunkResult,
                 items: ItemTruth, stats: _BehaviourStats) -> None:
    """Append one chunk's rows and user histories; count its positives and new targets."""
    for split, rows in result.rows.items():
        sinks[split].write_table(_rows_table(rows, items, split != "test"),
                                 row_group_size=writer.ROW_GROUP_ROWS)
        stats.positives[split] += int(rows.label.sum())
        stats.new_targets[split] += int(items.is_new[rows.item_id - 1].sum())
    stats.test_labels.append(result.rows["test"].label)
    sinks["item_seq"].write_table(pa.Table.from_arrays(
        [pa.array(result.user_ids), writer.list_column(result.user_history, pa.int64())],
        schema=writer.ITEM_SEQ_SCHEMA), row_group_size=writer.ROW_GROUP_ROWS)


def _behaviour_stage(root: Path, items: ItemTruth, cfg: SyntheticScale, seed: int,
                     bar: Any) -> _BehaviourStats:
    """Simulate the users chunk by chunk, streaming train/valid/test and item_seq."""
    tables = (behaviour.PopularityTable(items.popularity),
              behaviour.PopularityTable(items.popularity, items.release_time == 0))
    stats = _BehaviourStats(user_vectors=np.zeros((cfg.n_users + 1, LATENT_DIM),
                                                  dtype=np.float32))
    with contextlib.ExitStack() as stack:
        sinks = _open_row_sinks(stack, root)
        for chunk, start in enumerate(range(0, cfg.n_users, cfg.user_chunk)):
            users, result = _simulate_users(items, tables, cfg, seed, chunk, start)
            stats.user_vectors[start + 1: start + 1 + len(users)] = users
            _write_chunk(sinks, result, items, stats)
            bar.update(1)
        for sink in sinks.values():
            sink.close()
    return stats


def _summary(root: Path, cfg: SyntheticScale, seed: int, items: ItemTruth, n_images: int,
             stats: _BehaviourStats, timings: dict[str, float]) -> dict[str, Any]:
    return {
        "root": str(root), "scale": cfg.name, "seed": seed,
        "n_items": cfg.n_items, "n_users": cfg.n_users, "seq_len": cfg.seq_len,
        "tag_vocab": cfg.tag_vocab, "n_train": cfg.n_train, "n_valid": cfg.n_valid,
        "n_test": cfg.n_test, "n_images": n_images,
        "positive_rate": {k: stats.positives[k] / max(getattr(cfg, f"n_{k}"), 1)
                          for k in stats.positives},
        "n_new_items": int(items.is_new.sum()),
        "new_item_rows": stats.new_targets,
        "seconds": {k: round(v, 3) for k, v in timings.items()},
    }


def generate(root: str | os.PathLike, scale: str | SyntheticScale = "tiny", seed: int = 0,
             progress: bool = False, image_zip: bool = False, with_images: bool = True,
             workers: int | None = None, overwrite: bool = False) -> dict[str, Any]:
    """Write a synthetic MicroLens dataset under ``root``; return summary statistics.

    ``root`` receives the full layout (``MicroLens_1M_x1/{train,valid,test,item_info}
    .parquet``, ``item_feature.parquet``, ``item_emb.parquet``, ``item_seq.parquet``, the
    cover images as ``item_images/`` or, with ``image_zip=True``, ``item_images.zip``) and
    ``oracle/`` with the hidden truth. The same ``seed`` gives byte-identical files.
    ``with_images=False`` skips the covers (for quick behaviour-only experiments).
    ``workers`` image-rendering processes (default: up to 2). A ``root`` that already
    holds files is refused unless ``overwrite=True``, which replaces the generated files
    and removes covers of the other form (folder vs zip) so no stale images remain.
    """
    cfg = _resolve_scale(scale)
    seed = _check_seed(seed)
    workers = _check_workers(workers)
    root = _prepare_root(root, overwrite, image_zip, with_images)
    n_chunks = len(range(0, cfg.n_users, cfg.user_chunk))
    bar = progress_of(total=2 + n_chunks + int(with_images), enabled=progress,
                      desc=f"synthetic {cfg.name}", unit="stage")
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    items = _item_stage(root, cfg, seed)
    timings["items"] = time.perf_counter() - t0
    bar.update(1)

    t1 = time.perf_counter()
    stats = _behaviour_stage(root, items, cfg, seed, bar)
    timings["behaviour"] = time.perf_counter() - t1

    t2 = time.perf_counter()
    n_images = 0
    if with_images:
        n_images = _write_images(root, items, cfg, seed, image_zip, workers)
        bar.update(1)
    timings["images"] = time.perf_counter() - t2

    t3 = time.perf_counter()
    _write_oracle(root / ORACLE_DIR, items, stats.user_vectors,
                  np.concatenate(stats.test_labels), cfg, seed)
    timings["oracle"] = time.perf_counter() - t3
    bar.update(1)
    bar.close()

    summary = _summary(root, cfg, seed, items, n_images, stats, timings)
    logger.info("synthetic %s dataset written to %s in %.1f s", cfg.name, root,
                time.perf_counter() - t0)
    return summary


def _write_oracle(folder: Path, items: ItemTruth, user_vectors: np.ndarray,
                  test_labels: np.ndarray, cfg: SyntheticScale, seed: int) -> None:
    item_latent = np.vstack([np.zeros((1, LATENT_DIM), np.float32), items.latent])
    _save_npy(item_latent, folder / "item_latent.npy")
    _save_npy(user_vectors, folder / "user_latent.npy")
    _save_npy(test_labels.astype(np.int64), folder / "test_labels.npy")
    n = len(items.popularity)
    _write_table(pa.table({
        "item_id": pa.array(np.arange(1, n + 1, dtype=np.int64)),
        "popularity": pa.array(items.popularity),
        "pop_bias": pa.array(items.pop_bias),
        "release_time": pa.array(items.release_time),
        "is_new": pa.array(items.is_new),
    }), folder / "item_meta.parquet")
    blocks = {name: [sl.start, sl.stop] for name, sl in latent.block_slices().items()}
    layout = {
        "latent_dim": LATENT_DIM,
        "blocks": blocks,
        "block_weights": latent.BLOCK_WEIGHTS,
        "text_from": ["text_only", "shared"],
        "image_from": ["shared", "image_only"],
        "score": "u . v / click_temperature + pop_bias",
        "click_temperature": behaviour.CLICK_TEMPERATURE,
        "n_candidates": behaviour.N_CANDIDATES,
        "train_end_time": latent.TRAIN_END,
        "item_latent": "item_latent.npy: row i = item i, row 0 = padding (zeros)",
        "user_latent": "user_latent.npy: row u = user u, row 0 unused (zeros)",
        "test_labels": "test_labels.npy: int64 labels in test.parquet row order",
        "scale": cfg.name, "seed": seed,
    }
    with atomic_path(folder / "latent_layout.json") as tmp:
        tmp.write_text(json.dumps(layout, indent=2) + "\n", encoding="utf-8")
