"""The item catalog: ids, titles, tags, likes/views levels and lazy cover images.

Columns live in numpy arrays (titles in one list of ``str``); images are read only when
asked for. A catalog is immutable and picklable, so it can go to DataLoader workers.
"""
from __future__ import annotations

import contextlib
import hashlib
import io
import logging
import operator
import os
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence, Union

import numpy as np
import pyarrow as pa
from PIL import Image

from .images import ImageSource, RarImageSource, open_image_source
from ctr_eval.format import (DatasetError, find_layout, list_to_matrix, read_columns,
                             scalar_to_numpy)

logger = logging.getLogger(__name__)

N_TAGS = 5
FEATURE_COLUMNS = {"item_id": "int", "item_title": "str", "item_tags": "int_list",
                   "likes_level": "int", "views_level": "int"}
_RECORD_KEYS = {"item_id", "title", "tags", "image", "likes_level", "views_level"}
_FINGERPRINT_VERSION = b"mmembed-catalog-v1"

ImageRecord = Union[str, os.PathLike, Image.Image, None]


def _check_ids(item_ids: np.ndarray, where: str) -> None:
    bad = np.flatnonzero(item_ids <= 0)
    if len(bad):
        raise DatasetError(f"{where}: row {int(bad[0])}: item_id {int(item_ids[bad[0]])} is "
                           f"not valid; item ids are positive (0 is the padding item)")
    uniq, counts = np.unique(item_ids, return_counts=True)
    if len(uniq) != len(item_ids):
        dup = int(uniq[counts > 1][0])
        rows = np.flatnonzero(item_ids == dup)[:2]
        raise DatasetError(f"{where}: item_id {dup} appears more than once "
                           f"(rows {int(rows[0])} and {int(rows[1])}); item ids must be unique")


def _integer(record: Mapping[str, Any], key: str, row: int) -> int:
    try:
        return operator.index(record[key])
    except TypeError as err:
        raise TypeError(f"record {row}: {key!r} must be an integer, "
                        f"got {type(record[key]).__name__}") from err


class RecordImageSource(ImageSource):
    """Per-item images given in memory: a path, a PIL image or None, keyed by item id."""

    kind = "records"

    def __init__(self, images: dict[int, ImageRecord]):
        self.images = {}
        for item_id, image in images.items():
            if image is not None and not isinstance(image, (str, os.PathLike, Image.Image)):
                raise TypeError(f"item {item_id}: 'image' must be a path (str or Path), a "
                                f"PIL.Image.Image or None, got {type(image).__name__}")
            self.images[int(item_id)] = Path(image) if isinstance(image, (str, os.PathLike)) \
                else image

    def read(self, item_id: int) -> bytes | None:
        image = self.images.get(int(item_id))
        if isinstance(image, Image.Image):
            buffer = io.BytesIO()
            image.save(buffer, format="PNG")
            return buffer.getvalue()
        if image is None:
            return None
        try:
            data = image.read_bytes()
        except OSError as err:
            logger.debug("%s: no image: %s", image, err)
            return None
        return data or None

    def load(self, item_id: int) -> Image.Image | None:
        image = self.images.get(int(item_id))
        if isinstance(image, Image.Image):
            return image.convert("RGB")
        return super().load(item_id)

    def sizes(self, item_ids: np.ndarray) -> np.ndarray:
        out = np.full(len(item_ids), -1, np.int64)
        for k, item_id in enumerate(item_ids):
            image = self.images.get(int(item_id))
            if isinstance(image, Image.Image):
                out[k] = image.width * image.height * len(image.getbands())
            elif image is not None:
                with contextlib.suppress(OSError):
                    out[k] = image.stat().st_size
        return out

    def identity(self, item_ids: np.ndarray) -> bytes:
        digest = hashlib.sha256(super().identity(item_ids))
        for item_id in item_ids:
            image = self.images.get(int(item_id))
            if isinstance(image, Image.Image):  # in-memory pixels: hash them (small inputs)
                digest.update(image.mode.encode() + repr(image.size).encode() + image.tobytes())
            elif image is not None:
                digest.update(image.name.encode())
        return digest.digest()


class ItemCatalog:
    """Items of a dataset. Build with :meth:`from_dir` or :meth:`from_records`.

    Attributes: ``item_ids`` (N,) int64; ``titles`` list of str ("" when missing);
    ``tags`` (N, 5) int64, 0 = padding; ``likes_level`` / ``views_level`` (N,) int64 or
    None; ``image_source`` (None when the catalog has no images).
    """

    def __init__(self, item_ids: np.ndarray, titles: list[str], tags: np.ndarray,
                 likes_level: np.ndarray | None = None, views_level: np.ndarray | None = None,
                 image_source: ImageSource | None = None, source: str = "memory"):
        n = len(item_ids)
        if len(titles) != n or tags.shape != (n, N_TAGS):
            raise ValueError(f"item_ids ({n},), titles ({len(titles)},) and tags "
                             f"{tags.shape} must describe the same {n} items, tags as (N, {N_TAGS})")
        for name, levels in (("likes_level", likes_level), ("views_level", views_level)):
            if levels is not None and levels.shape != (n,):
                raise ValueError(f"{name} has shape {levels.shape}, expected ({n},)")
        self.item_ids = np.asarray(item_ids, dtype=np.int64)
        self.titles = titles
        self.tags = np.asarray(tags, dtype=np.int64)
        self.likes_level = likes_level
        self.views_level = views_level
        self.image_source = image_source
        self.source = source

    # ------------------------------------------------------------------ constructors
    @classmethod
    def from_dir(cls, data_dir: str | os.PathLike, images: str | os.PathLike | None = "auto",
                 cache_dir: str | os.PathLike | None = None,
                 progress: bool = True) -> ItemCatalog:
        """Read ``item_feature.parquet`` of the dataset at ``data_dir`` (ROOT or
        ROOT/MicroLens_1M_x1).

        ``images``: "auto" picks ``item_images/``, then ``item_images.zip``, then
        ``item_images.rar`` (None when there is none); None: no images; or a path to a
        folder / .zip / .rar. A RAR is extracted once into ``cache_dir`` (default
        ``ROOT/.mmembed_cache``) on first image access or :meth:`prepare_images`.
        """
        layout = find_layout(data_dir)
        path = layout.require("item_feature")
        table = read_columns(path, FEATURE_COLUMNS)
        item_ids = scalar_to_numpy(table.column("item_id"), path, "item_id")
        _check_ids(item_ids, str(path))
        tag_column = table.column("item_tags")
        if tag_column.null_count:  # an item without tags: all padding
            tag_column = tag_column.fill_null(pa.scalar([0] * N_TAGS, tag_column.type))
        tags = list_to_matrix(tag_column, path, "item_tags", width=N_TAGS, fixed=True)
        titles = table.column("item_title").fill_null("").to_pylist()
        likes = scalar_to_numpy(table.column("likes_level"), path, "likes_level")
        views = scalar_to_numpy(table.column("views_level"), path, "views_level")
        del table
        cache = Path(cache_dir) if cache_dir is not None else layout.cache_dir
        if isinstance(images, str) and images == "auto":
            found = layout.image_source
            source = open_image_source(found, cache, progress) if found is not None else None
        elif images is None:
            source = None
        else:
            source = open_image_source(images, cache, progress)
        logger.info("catalog %s: %d items, images: %s", path, len(item_ids),
                    source.describe() if source else "none")
        return cls(item_ids, titles, tags, likes, views, source, source=str(layout.root))

    @classmethod
    def from_records(cls, records: Iterable[Mapping[str, Any]]) -> ItemCatalog:
        """Build a catalog from dicts with "title" and optional "tags" (up to 5 ints),
        "image" (path, PIL image or None), "item_id" (default 1..N), "likes_level",
        "views_level"."""
        records = list(records)
        n = len(records)
        item_ids = np.arange(1, n + 1, dtype=np.int64)
        titles: list[str] = []
        tags = np.zeros((n, N_TAGS), np.int64)
        images: dict[int, ImageRecord] = {}
        levels: dict[str, list[int]] = {"likes_level": [], "views_level": []}
        has_id = [isinstance(r, Mapping) and "item_id" in r for r in records]
        if any(has_id) and not all(has_id):
            raise ValueError("records: give 'item_id' in every record or in none "
                             f"(record {has_id.index(not has_id[0])} differs from record 0)")
        for row, record in enumerate(records):
            if not isinstance(record, Mapping):
                raise TypeError(f"record {row}: expected a dict, got {type(record).__name__}")
            unknown = set(record) - _RECORD_KEYS
            if unknown:
                raise ValueError(f"record {row}: unknown keys {sorted(unknown)}; "
                                 f"valid keys: {sorted(_RECORD_KEYS)}")
            if "item_id" in record:
                item_ids[row] = _integer(record, "item_id", row)
            title = record.get("title")
            if title is not None and not isinstance(title, str):
                raise TypeError(f"record {row}: 'title' must be a str or None, "
                                f"got {type(title).__name__}")
            titles.append(title or "")
            row_tags = list(record.get("tags") or [])
            if len(row_tags) > N_TAGS:
                raise ValueError(f"record {row}: {len(row_tags)} tags, at most {N_TAGS} allowed")
            try:
                tags[row, :len(row_tags)] = [operator.index(t) for t in row_tags]
            except TypeError as err:
                raise TypeError(f"record {row}: 'tags' must be integers, got {row_tags!r}") from err
            if np.any(tags[row] < 0):
                raise ValueError(f"record {row}: tag ids must be >= 0, got {row_tags!r}")
            image = record.get("image")
            if image is not None and not isinstance(image, (str, os.PathLike, Image.Image)):
                raise TypeError(f"record {row}: 'image' must be a path (str or Path), a "
                                f"PIL.Image.Image or None, got {type(image).__name__}")
            images[row] = image
            for name in levels:
                if name in record:
                    levels[name].append(_integer(record, name, row))
        _check_ids(item_ids, "records")
        level_arrays = {}
        for name, values in levels.items():
            if values and len(values) != n:
                raise ValueError(f"records: '{name}' given in {len(values)} of {n} records; "
                                 f"give it in every record or in none")
            level_arrays[name] = np.array(values, np.int64) if values else None
        by_id = {int(item_ids[row]): image for row, image in images.items()}
        source = RecordImageSource(by_id) if any(v is not None for v in by_id.values()) else None
        return cls(item_ids, titles, tags, level_arrays["likes_level"],
                   level_arrays["views_level"], source, source="records")

    # ------------------------------------------------------------------ access
    def __len__(self) -> int:
        return len(self.item_ids)

    def __repr__(self) -> str:
        images = self.image_source.describe() if self.image_source else "none"
        return f"ItemCatalog({len(self)} items from {self.source}, images: {images})"

    @property
    def has_images(self) -> bool:
        return self.image_source is not None

    def _position(self, pos: int) -> int:
        try:
            pos = operator.index(pos)
        except TypeError as err:
            raise TypeError(f"position must be an integer, got {type(pos).__name__}") from err
        if not 0 <= pos < len(self):
            raise IndexError(f"position {pos} out of range for a catalog of {len(self)} items "
                             f"(valid: 0..{len(self) - 1})")
        return pos

    def image_bytes(self, pos: int) -> bytes | None:
        """The encoded image of the item at ``pos`` (None when it has none)."""
        pos = self._position(pos)
        if self.image_source is None:
            return None
        return self.image_source.read(int(self.item_ids[pos]))

    def load_image(self, pos: int) -> Image.Image | None:
        """The image of the item at ``pos`` in RGB; None when missing, empty or undecodable."""
        pos = self._position(pos)
        if self.image_source is None:
            return None
        return self.image_source.load(int(self.item_ids[pos]))

    def prepare_images(self) -> None:
        """Do one-time image work now (extracting a RAR archive) rather than on first
        access; call in the main process before starting DataLoader workers."""
        if isinstance(self.image_source, RarImageSource):
            self.image_source.prepare()

    def subset(self, positions: Sequence[int] | np.ndarray) -> ItemCatalog:
        """A catalog of the items at ``positions``, in that order, sharing image sources."""
        index = np.asarray(positions)
        if index.size == 0:
            index = index.astype(np.int64)
        if index.ndim != 1 or not np.issubdtype(index.dtype, np.integer):
            raise TypeError(f"positions must be a 1-d sequence of integers, got dtype "
                            f"{index.dtype} and shape {index.shape}")
        bad = np.flatnonzero((index < 0) | (index >= len(self)))
        if len(bad):
            raise IndexError(f"positions[{int(bad[0])}] = {int(index[bad[0]])} out of range "
                             f"for a catalog of {len(self)} items (valid: 0..{len(self) - 1})")
        if len(np.unique(index)) != len(index):
            raise ValueError("positions must not repeat an item (item ids stay unique)")

        def pick(values: np.ndarray | None) -> np.ndarray | None:
            return None if values is None else values[index]

        return ItemCatalog(self.item_ids[index], [self.titles[i] for i in index],
                           self.tags[index], pick(self.likes_level), pick(self.views_level),
                           self.image_source, source=self.source)

    def fingerprint(self) -> str:
        """Stable hex digest of ids, titles, tags and the images' names and sizes.

        Cheap: no image is read. It does not depend on where the data lives, so a copied
        dataset keeps its fingerprint.
        """
        digest = hashlib.sha256(_FINGERPRINT_VERSION)
        digest.update(np.int64(len(self)).tobytes())
        digest.update(np.ascontiguousarray(self.item_ids, dtype="<i8").tobytes())
        digest.update(np.ascontiguousarray(self.tags, dtype="<i8").tobytes())
        for title in self.titles:
            raw = title.encode("utf-8")
            digest.update(len(raw).to_bytes(8, "little") + raw)
        if self.image_source is None:
            digest.update(b"no-images")
        else:
            digest.update(self.image_source.identity(self.item_ids))
        return digest.hexdigest()
