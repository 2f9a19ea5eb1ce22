"""Cover decoding in DataLoader workers, shared by the clip and mllm encoders.

Workers call ``catalog.load_image(pos)`` (JPEG decode + RGB) and the encoder's
``transform`` (e.g. CLIP preprocessing), so the model never waits on decoding. An item
whose cover is missing, empty, undecodable or too large (refused from its header, before
decoding; see ``mmembed.datasets.covers.decode_cover``) comes through as ``None`` and is
reported as invalid by the encoder; it never becomes a silent zero image.
"""
from __future__ import annotations

import logging
import os
from typing import Any, Callable, Iterator, Sequence

logger = logging.getLogger(__name__)

__all__ = ["CatalogImageDataset", "collate_tensors", "iterate_image_batches", "default_num_workers"]


def default_num_workers() -> int:
    """min(4, usable CPUs - 1), at least 0: leaves one core for the model."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:
        cpus = os.cpu_count() or 1
    return max(0, min(4, cpus - 1))


class CatalogImageDataset:
    """Map-style dataset: index i -> (i, transformed cover of positions[i] or None)."""

    def __init__(self, catalog: Any, positions: Sequence[int], transform: Callable | None = None) -> None:
        self.catalog = catalog
        self.positions = list(positions)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.positions)

    def __getitem__(self, index: int) -> tuple[int, Any]:
        image = self.catalog.load_image(self.positions[index])
        if image is None:
            return index, None
        if image.mode != "RGB":
            image = image.convert("RGB")
        return index, self.transform(image) if self.transform is not None else image


def collate_tensors(batch: list[tuple[int, Any]]):
    """(indices, ok mask, stacked tensors of the ok items) for fixed-size image tensors."""
    import torch

    indices = torch.tensor([i for i, _ in batch], dtype=torch.long)
    ok = torch.tensor([x is not None for _, x in batch], dtype=torch.bool)
    tensors = [x for _, x in batch if x is not None]
    stacked = torch.stack(tensors) if tensors else None
    return indices, ok, stacked


def iterate_image_batches(
    catalog: Any,
    positions: Sequence[int],
    batch_size: int,
    num_workers: int,
    transform: Callable | None = None,
    collate_fn: Callable = collate_tensors,
) -> Iterator[Any]:
    """Yield collated batches over ``positions`` in order, decoding in worker processes."""
    from torch.utils.data import DataLoader

    if not getattr(catalog, "has_images", False):
        # No image source at all: no point starting workers.
        num_workers = 0
    elif hasattr(catalog, "prepare_images"):
        # One-time work (e.g. extracting a RAR archive) in this process, not in every worker.
        catalog.prepare_images()
    dataset = CatalogImageDataset(catalog, positions, transform)
    loader = DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=False,
        num_workers=num_workers,
        collate_fn=collate_fn,
        prefetch_factor=2 if num_workers > 0 else None,
    )
    yield from loader
