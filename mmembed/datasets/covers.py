"""Whether a cover image can be used: one decision for extraction and validation alike.

A cover is "ok", or "missing" (no file), "empty", "too large" (its header claims more than
MAX_COVER_PIXELS: refused before any pixel is decoded) or "undecodable" (not an image, or
corrupt or truncated pixel data). Decoding is in full, so a file cut short is found by
validation exactly as extraction would find it.
"""
from __future__ import annotations

import functools
import io
import logging
import os
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
from PIL import Image

logger = logging.getLogger(__name__)

# Covers far larger than any real one are refused before decoding: MicroLens covers are a
# few hundred pixels a side, and a tiny file whose header claims 12000x12000 would
# otherwise take over a gigabyte to decode.
MAX_COVER_PIXELS = 40_000_000

# Why a cover cannot be used; "ok" when it can.
OK, MISSING, EMPTY, UNDECODABLE, TOO_LARGE = "ok", "missing", "empty", "undecodable", "too large"
COVER_PROBLEMS = (MISSING, EMPTY, UNDECODABLE, TOO_LARGE)


def decode_cover(data: bytes | None, what: str = "image",
                 reduced: bool = False) -> tuple[Image.Image | None, str]:
    """Decode a cover in full: the one test of "decodable" that extraction and validation share.

    Returns ``(RGB image, "ok")`` or ``(None, why)``: "missing" (no bytes), "empty", "too
    large" (the header claims more than MAX_COVER_PIXELS; refused before any pixel is
    decoded) or "undecodable" (not an image, or corrupt or truncated pixel data).
    ``reduced=True`` lets a JPEG decode at 1/8 scale for speed: every compressed byte is
    still read, so a truncated file fails just the same, but the image returned is small.
    """
    if data is None:
        return None, MISSING
    if not data:
        return None, EMPTY
    try:
        with Image.open(io.BytesIO(data)) as img:
            return _decode_opened(img, what, reduced)
    except Image.DecompressionBombError as err:  # over PIL's own limit, found at open
        logger.debug("%s: cover refused: %s", what, err)
        return None, TOO_LARGE
    except (OSError, ValueError, SyntaxError) as err:
        logger.debug("%s: cannot decode image: %s", what, err)
        return None, UNDECODABLE


def _decode_opened(img: Image.Image, what: str, reduced: bool) -> tuple[Image.Image | None, str]:
    width, height = img.size  # from the header: nothing decoded yet
    if width * height > MAX_COVER_PIXELS:
        logger.debug("%s: cover refused: %dx%d pixels is over the %d-pixel limit",
                     what, width, height, MAX_COVER_PIXELS)
        return None, TOO_LARGE
    if reduced:
        img.draft(None, (1, 1))  # JPEG only: decode at the smallest DCT scale
    img.load()
    return img.convert("RGB"), OK


def decode_image(data: bytes | None, what: str) -> Image.Image | None:
    """Decode ``data`` into an RGB image; None (logged at debug) when it cannot be used."""
    return decode_cover(data, what)[0]


def classify_covers(source: Any, item_ids: np.ndarray, progress: bool = False,
                    reduced: bool = True) -> dict[str, list[int]]:
    """The item ids whose cover cannot be used, by reason (the keys of COVER_PROBLEMS).

    Missing and empty covers come from the source's sizes (no read); the others are read
    and judged by :func:`decode_cover` in a few threads (decoding releases the GIL). A
    source that breaks while being read (e.g. a corrupt RAR member) raises DatasetError.
    """
    item_ids = np.asarray(item_ids, dtype=np.int64)
    sizes = source.sizes(item_ids)
    found: dict[str, list[int]] = {kind: [] for kind in COVER_PROBLEMS}
    found[MISSING] = item_ids[sizes < 0].tolist()
    found[EMPTY] = item_ids[sizes == 0].tolist()
    to_read = item_ids[sizes > 0].tolist()
    if not to_read:
        return found
    prepare = getattr(source, "prepare", None)
    if prepare is not None:
        prepare()  # e.g. extract a RAR archive once, before the threads start reading
    from ctr_eval.progress import progress as progress_of

    judge = functools.partial(_cover_status, source, reduced=reduced)
    pool = ThreadPoolExecutor(max_workers=min(4, os.cpu_count() or 1))
    try:
        statuses = progress_of(pool.map(judge, to_read), total=len(to_read), desc="check images",
                               unit="img", enabled=progress)
        for item_id, status in zip(to_read, statuses):
            if status != OK:
                found[status].append(item_id)
    finally:
        pool.shutdown(cancel_futures=True)  # on an error or Ctrl-C, skip the rest
    return found


def _cover_status(source: Any, item_id: int, reduced: bool) -> str:
    data = source.read(item_id)
    if data is None:  # listed with a size, yet unreadable
        return UNDECODABLE
    return decode_cover(data, f"{source.describe()} item {item_id}", reduced)[1]
