"""Cover images drawn from an item's image content ``[shared | image_only]``.

A fixed random matrix maps the 16-d image content to 16 squashed parameters in (0, 1):
background hue and brightness, shape hue and saturation, number, size, centre and spread
of the shapes, stripe angle, spacing and contrast, and the shape kind (circle, square,
triangle, star). Small per-item jitter (positions, sizes) comes from the item's own
random stream, so every image depends only on its own item and the seed.
"""
from __future__ import annotations

import colorsys
import functools
import io
import logging
import multiprocessing
import zipfile
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np
from PIL import Image, ImageDraw

from .latent import STAGE_IMAGES, rng_for

logger = logging.getLogger(__name__)

N_PARAMS = 16
PARAM_GAIN = 1.6  # steepness of the squashing: higher = more saturated parameters
JPEG_QUALITY = 88
ZIP_DATE = (1980, 1, 1, 0, 0, 0)
SHAPE_KINDS = ("circle", "square", "triangle", "star")


def image_projection(dim: int, rng: np.random.Generator) -> np.ndarray:
    return rng.standard_normal((N_PARAMS, dim)) / np.sqrt(dim)


def image_params(image_content: np.ndarray, projection: np.ndarray) -> np.ndarray:
    """(N, 16) parameters in (0, 1); columns 12..15 are shape-kind scores."""
    z = PARAM_GAIN * image_content.astype(np.float64) @ projection.T
    return 1.0 / (1.0 + np.exp(-z))


def _rgb(h: float, s: float, v: float) -> tuple[int, int, int]:
    r, g, b = colorsys.hsv_to_rgb(h % 1.0, s, v)
    return int(r * 255), int(g * 255), int(b * 255)


def _shape(draw: ImageDraw.ImageDraw, kind: str, x: float, y: float, r: float,
           angle: float, fill: tuple[int, int, int]) -> None:
    if kind == "circle":
        draw.ellipse([x - r, y - r, x + r, y + r], fill=fill)
        return
    if kind == "square":
        corners = 4
        radius = np.full(corners, r * 1.3)
    elif kind == "triangle":
        corners = 3
        radius = np.full(corners, r * 1.4)
    else:  # star
        corners = 10
        radius = np.where(np.arange(corners) % 2 == 0, r * 1.5, r * 0.6)
    theta = angle + 2 * np.pi * np.arange(corners) / corners
    pts = list(zip((x + radius * np.cos(theta)).tolist(), (y + radius * np.sin(theta)).tolist()))
    draw.polygon(pts, fill=fill)


@functools.lru_cache(maxsize=4)
def _grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    return yy, xx


def render_image(params: np.ndarray, item_id: int, seed: int, size: int = 128) -> bytes:
    """JPEG bytes of one cover image, a pure function of (params, item_id, seed, size)."""
    rng = rng_for(seed, STAGE_IMAGES, item_id)
    p = params
    bg = _rgb(0.85 * p[0], 0.55, 0.25 + 0.7 * p[1])
    stripe_col = _rgb(0.85 * p[0] + 0.5, 0.35, 0.9 - 0.6 * p[1])
    # Stripes: a texture whose angle, spacing and contrast are image-only signals.
    angle = np.pi * p[9]
    spacing = 4.0 + 26.0 * p[10]
    contrast = 0.6 * p[11]
    yy, xx = _grid(size)
    phase = (xx * np.float32(np.cos(angle)) + yy * np.float32(np.sin(angle))) / np.float32(spacing)
    stripes = (phase - np.floor(phase)) < 0.5
    mask = Image.fromarray(stripes.astype(np.uint8) * np.uint8(round(255 * contrast)), "L")
    img = Image.composite(Image.new("RGB", (size, size), stripe_col),
                          Image.new("RGB", (size, size), bg), mask)
    draw = ImageDraw.Draw(img)
    kind = SHAPE_KINDS[int(np.argmax(p[12:16]))]
    fill = _rgb(0.85 * p[2] + 0.1, 0.35 + 0.65 * p[3], 0.95)
    count = 1 + int(p[4] * 6.999)
    radius = size * (0.05 + 0.13 * p[5])
    cx, cy = size * (0.2 + 0.6 * p[6]), size * (0.2 + 0.6 * p[7])
    spread = size * (0.05 + 0.3 * p[8])
    offsets = rng.standard_normal((count, 2)) * spread
    jitter = rng.uniform(0.8, 1.2, count)
    turns = rng.uniform(0, 2 * np.pi, count)
    for k in range(count):
        x = float(np.clip(cx + offsets[k, 0], 0, size))
        y = float(np.clip(cy + offsets[k, 1], 0, size))
        _shape(draw, kind, x, y, radius * jitter[k], turns[k], fill)
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=JPEG_QUALITY)
    return buf.getvalue()


def _render_chunk(args: tuple[np.ndarray, np.ndarray, int, int]) -> list[bytes]:
    params, ids, seed, size = args
    return [render_image(p, int(i), seed, size) for p, i in zip(params, ids)]


def render_all(params: np.ndarray, seed: int, size: int, workers: int,
               chunk: int = 500) -> Iterator[tuple[int, bytes]]:
    """Yield (item_id, jpeg bytes) for items 1..N in order; ``workers`` > 1 uses a pool."""
    n = params.shape[0]
    jobs = [(params[s:s + chunk], np.arange(s + 1, min(s + chunk, n) + 1), seed, size)
            for s in range(0, n, chunk)]
    if workers <= 1 or len(jobs) <= 1:
        results: Iterable[list[bytes]] = map(_render_chunk, jobs)
        for job, blobs in zip(jobs, results):
            yield from zip(job[1].tolist(), blobs)
        return
    logger.debug("rendering %d covers with %d worker processes", n, workers)
    ctx = multiprocessing.get_context("fork" if "fork" in multiprocessing.get_all_start_methods()
                                      else "spawn")
    with ctx.Pool(workers) as pool:
        for job, blobs in zip(jobs, pool.imap(_render_chunk, jobs)):
            yield from zip(job[1].tolist(), blobs)


def write_folder(images: Iterable[tuple[int, bytes]], folder: Path) -> int:
    folder.mkdir(parents=True, exist_ok=True)
    count = 0
    for item_id, blob in images:
        (folder / f"{item_id}.jpg").write_bytes(blob)
        count += 1
    return count


def write_zip(images: Iterable[tuple[int, bytes]], path: Path) -> int:
    """Stored (JPEG is already compressed) zip with fixed dates, members in item-id order."""
    count = 0
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED) as zf:
        for item_id, blob in images:
            info = zipfile.ZipInfo(f"item_images/{item_id}.jpg", date_time=ZIP_DATE)
            info.external_attr = 0o644 << 16
            info.create_system = 3
            zf.writestr(info, blob)
            count += 1
    return count
