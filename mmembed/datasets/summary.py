"""A short description of a dataset: sizes, click rates, history lengths, images.

``summarize`` streams the split files by pyarrow batches (no full load), so it also runs
on the 3.6M-row challenge data; ``format_summary`` turns its dict into a readable table.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pyarrow as pa

from .images import RarImageSource, open_image_source
from ctr_eval.format import SPLITS, DatasetError, DatasetLayout, find_layout, open_parquet

logger = logging.getLogger(__name__)

BATCH_ROWS = 262_144


def _stream_rows(path: Path, columns: list[str]) -> Iterator[pa.RecordBatch]:
    """Batches of the ``columns`` that ``path`` has; read errors name the file."""
    pf = open_parquet(path)
    present = [c for c in columns if pf.schema_arrow.get_field_index(c) >= 0]
    try:
        yield from pf.iter_batches(batch_size=BATCH_ROWS, columns=present)
    except (pa.ArrowException, OSError) as err:
        raise DatasetError(f"{path}: cannot read (truncated or corrupt file? "
                           f"run validate_dataset for details): {err}") from err


def _history_stats(batch: pa.RecordBatch, seen: np.ndarray | None) -> tuple[int, int, int]:
    """(history length L, non-padded positions, rows) of one batch's item_seq."""
    seq = batch.column("item_seq")
    flat = seq.flatten().to_numpy(zero_copy_only=False)
    if seen is not None and len(flat):
        ids = flat[(flat > 0) & (flat < len(seen))]
        seen[ids] = True
    width = len(flat) // max(len(seq), 1)
    return width, int(np.count_nonzero(flat)), len(seq)


def _summarize_split(path: Path, split: str, seen: np.ndarray | None,
                     eval_targets: list[np.ndarray], users: list[np.ndarray]) -> dict[str, Any]:
    rows = positives = nonpad = 0
    width = 0
    has_label = False
    for batch in _stream_rows(path, ["user_id", "item_seq", "item_id", "label"]):
        rows += batch.num_rows
        names = batch.schema.names
        if "user_id" in names:
            users.append(batch.column("user_id").to_numpy(zero_copy_only=False))
        if "item_seq" in names:
            width, count, _ = _history_stats(batch, seen if split == "train" else None)
            nonpad += count
        if "item_id" in names:
            targets = batch.column("item_id").to_numpy(zero_copy_only=False)
            if split == "train" and seen is not None:
                seen[targets[(targets > 0) & (targets < len(seen))]] = True
            elif split != "train":
                eval_targets.append(targets)
        if "label" in names:
            has_label = True
            positives += int(np.count_nonzero(batch.column("label").to_numpy(zero_copy_only=False) == 1))
    return {
        "rows": rows,
        "positive_rate": positives / rows if has_label and rows else None,
        "history_length": width,
        "mean_history": nonpad / rows if rows else 0.0,
    }


def _summarize_images(layout: DatasetLayout, item_ids: np.ndarray) -> dict[str, Any] | None:
    if layout.image_source is None:
        return None
    source = open_image_source(layout.image_source, layout.cache_dir, progress=False)
    sizes = source.sizes(item_ids)
    example = None
    can_read = not isinstance(source, RarImageSource) or source.is_extracted()
    for item_id in item_ids[sizes > 0][:20] if can_read else []:
        image = source.load(int(item_id))
        if image is not None:
            example = list(image.size)
            break
    return {"source": source.describe(), "kind": source.kind,
            "count": int(np.count_nonzero(sizes > 0)), "example_size": example}


def summarize(data_dir: str | os.PathLike) -> dict[str, Any]:
    """Key figures of the dataset at ``data_dir`` as a plain dict (see ``format_summary``)."""
    layout = find_layout(data_dir)
    out: dict[str, Any] = {"root": str(layout.root)}
    n_items = None
    item_ids = np.zeros(0, np.int64)
    tags = []
    if layout.has("item_feature"):
        ids = []
        for batch in _stream_rows(layout.item_feature, ["item_id", "item_tags"]):
            ids.append(batch.column("item_id").to_numpy(zero_copy_only=False))
            tags.append(batch.column("item_tags").flatten().to_numpy(zero_copy_only=False))
        item_ids = np.concatenate(ids) if ids else item_ids
        n_items = len(item_ids)
    elif layout.has("item_info"):
        n_items = max(open_parquet(layout.item_info).metadata.num_rows - 1, 0)
        item_ids = np.arange(1, n_items + 1, dtype=np.int64)
    out["items"] = n_items
    all_tags = np.concatenate(tags) if tags else np.zeros(0, np.int64)
    used = np.unique(all_tags[all_tags > 0])
    out["tags"] = {"distinct": int(len(used)), "max_id": int(used.max()) if len(used) else 0}

    max_id = int(item_ids.max()) if len(item_ids) else 0
    seen = np.zeros(max_id + 1, bool) if max_id else None
    eval_targets: list[np.ndarray] = []
    users: list[np.ndarray] = []
    out["splits"] = {}
    for split in SPLITS:
        if layout.has(split):
            out["splits"][split] = _summarize_split(layout.path(split), split, seen,
                                                    eval_targets, users)
    out["users"] = int(len(np.unique(np.concatenate(users)))) if users else 0
    if seen is not None and layout.has("train"):
        out["items_in_train"] = int(np.count_nonzero(seen))
        targets = np.unique(np.concatenate(eval_targets)) if eval_targets else np.zeros(0, np.int64)
        targets = targets[(targets > 0) & (targets <= max_id)]
        out["eval_items_unseen_in_train"] = int(np.count_nonzero(~seen[targets]))
    if layout.has("item_seq"):
        rows = nonpad = width = 0
        for batch in _stream_rows(layout.item_seq, ["item_seq"]):
            width, count, n = _history_stats(batch, None)
            rows, nonpad = rows + n, nonpad + count
        out["user_sequences"] = {"users": rows, "history_length": width,
                                 "mean_history": nonpad / rows if rows else 0.0}
    out["images"] = _summarize_images(layout, item_ids)
    files = {}
    for name in DatasetLayout.FILE_NAMES:
        if layout.has(name):
            files[str(layout.path(name).relative_to(layout.root))] = layout.path(name).stat().st_size
    for archive in (layout.images_zip, layout.images_rar):
        if archive is not None:
            files[archive.name] = archive.stat().st_size
    out["files"] = files
    return out


def _bytes(n: int) -> str:
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{n} B"


def format_summary(summary: dict[str, Any]) -> str:
    """A plain-text table of a :func:`summarize` result."""
    lines = [f"Dataset {summary['root']}"]
    tags = summary.get("tags", {})
    lines.append(f"  items    {summary.get('items') or 0:>12,}   tag ids used: "
                 f"{tags.get('distinct', 0):,} (largest {tags.get('max_id', 0):,})")
    lines.append(f"  users    {summary.get('users', 0):>12,}")
    if summary.get("splits"):
        lines.append("")
        lines.append(f"  {'split':<8}{'rows':>12}{'positives':>11}{'history L':>11}"
                     f"{'mean non-pad':>14}")
        for split, s in summary["splits"].items():
            rate = "-" if s["positive_rate"] is None else f"{100 * s['positive_rate']:.1f}%"
            lines.append(f"  {split:<8}{s['rows']:>12,}{rate:>11}{s['history_length']:>11}"
                         f"{s['mean_history']:>14.1f}")
        lines.append("")
    if "items_in_train" in summary:
        lines.append(f"  items seen in train (targets or histories): {summary['items_in_train']:,}")
        lines.append(f"  valid/test target items never seen in train: "
                     f"{summary['eval_items_unseen_in_train']:,}")
    seqs = summary.get("user_sequences")
    if seqs:
        lines.append(f"  item_seq.parquet: {seqs['users']:,} users, history L {seqs['history_length']}"
                     f", mean non-pad {seqs['mean_history']:.1f}")
    images = summary.get("images")
    if images:
        size = ("size unknown (archive not extracted yet)" if images["example_size"] is None
                else "e.g. {}x{} px".format(*images["example_size"]))
        lines.append(f"  images ({images['kind']}): {images['count']:,} files, {size}")
    else:
        lines.append("  images: none")
    if summary.get("files"):
        lines.append("  files:")
        for name, size in summary["files"].items():
            lines.append(f"    {name:<36}{_bytes(size):>12}")
    return "\n".join(lines)
