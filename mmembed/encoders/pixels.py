"""Classical pixel features of the cover image: no learned weights, no model to fetch.

Each cover is decoded as the other image encoders decode it (a missing, empty, truncated
or oversized cover gives valid=False), resized to WORK_SIDE x WORK_SIDE, and described by
three fixed blocks, concatenated in this order:

* ``thumbnail`` x ``thumbnail`` RGB thumbnail (area-averaged), values in [0, 1], row-major
  (y, x, channel): 3 * thumbnail**2 numbers;
* HSV histograms: PIL's 8-bit hue, saturation and value channels, each cut into
  ``hsv_bins`` equal bins, as fractions of the pixels (each channel's bins sum to 1);
* an edge-orientation histogram: central-difference gradients of the grey image,
  orientation folded to [0, pi) in ``orientation_bins`` equal bins, each bin the summed
  gradient magnitude / (pixels * 255) (0 bins leaves the block out).

dim = 3 * thumbnail**2 + sum(hsv_bins) + orientation_bins (232 with the defaults). The
features are raw (not standardised); fusion heads normalise. The encoder gives an offline
set-up without CLIP weights an image signal that needs no random-init model: on the
synthetic covers a ridge probe recovers somewhat more of the image latents from it than
from a random-init CLIP image tower, at a small fraction of the time (docs/encoders.md).
It is deterministic and weight-free: ``weights_id`` is "no-weights:pixels-v1" and
``is_random_init`` False. Where trained weights exist, CLIP and the MLLM encoders remain
the image encoders to use.
"""
from __future__ import annotations

import logging
import numbers
from typing import Any

import numpy as np
from PIL import Image

from . import register_encoder
from ._images import default_num_workers, iterate_image_batches
from .base import Encoder, progress_bar
from .clip import _cover_breakdown, _why_invalid

logger = logging.getLogger(__name__)

__all__ = ["PixelsEncoder", "pixel_features", "WORK_SIDE"]

#: Side of the square image the histograms and gradients are computed on.
WORK_SIDE = 128
WEIGHTS_ID = "no-weights:pixels-v1"


@register_encoder("pixels")
class PixelsEncoder(Encoder):
    """Classical pixel features, no learned weights: RGB thumbnail, HSV and edge histograms of the cover."""

    modalities = ("image",)
    needs_weights = False
    defaults = {
        "thumbnail": 8,              # side of the RGB thumbnail
        "hsv_bins": [16, 8, 8],      # bins of the hue, saturation, value histograms
        "orientation_bins": 8,       # edge-orientation bins over [0, pi); 0 = none
    }
    runtime_defaults: dict[str, Any] = {}
    default_batch_size = 256

    def _check_options(self) -> None:
        opts = self.options
        _check_int("thumbnail", opts["thumbnail"], 1, WORK_SIDE)
        bins = opts["hsv_bins"]
        if not isinstance(bins, (list, tuple)):
            raise TypeError(f"pixels option hsv_bins must be a list of 3 ints (hue, saturation, "
                            f"value), got {bins!r}")
        if len(bins) != 3:
            raise ValueError(f"pixels option hsv_bins must have 3 entries (hue, saturation, "
                             f"value), got {len(bins)}: {list(bins)!r}")
        for channel, count in zip(("hue", "saturation", "value"), bins):
            _check_int(f"hsv_bins ({channel})", count, 1, 256)
        opts["hsv_bins"] = [int(b) for b in bins]  # a tuple and a list give one config
        _check_int("orientation_bins", opts["orientation_bins"], 0, 180)

    @property
    def dim(self) -> int:
        opts = self.options
        return 3 * opts["thumbnail"] ** 2 + sum(opts["hsv_bins"]) + opts["orientation_bins"]

    def weights_id(self) -> str:
        return WEIGHTS_ID

    def default_num_workers(self) -> int:
        return default_num_workers()

    def _load_model(self) -> Any:
        # Nothing to load; the "model" is the picklable feature function the workers run.
        opts = self.options
        return _PixelTransform(opts["thumbnail"], tuple(opts["hsv_bins"]), opts["orientation_bins"])

    def _encode(self, catalog, batch_size, progress, num_workers):
        n = len(catalog)
        vectors = np.zeros((n, self.dim), dtype=np.float32)
        valid = np.zeros(n, dtype=bool)
        batches = iterate_image_batches(catalog, range(n), batch_size, num_workers,
                                        self._model, _collate_arrays)
        total = (n + batch_size - 1) // batch_size
        for indices, ok, feats in progress_bar(batches, total, "pixels", progress):
            rows = indices[ok]
            if len(rows):
                vectors[rows] = feats
                valid[rows] = True
        extra = {"features": "classical pixel features, no learned weights"}
        extra.update(_why_invalid(catalog, {"image": valid}, valid))
        return vectors, valid, extra

    def _describe_missing(self, info: dict) -> str:
        return f"a usable cover image ({_cover_breakdown(info)})"


def _check_int(name: str, value: Any, low: int, high: int) -> None:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"pixels option {name} must be an int, got {value!r}")
    if not low <= value <= high:
        raise ValueError(f"pixels option {name} must be in {low}..{high}, got {value}")


class _PixelTransform:
    """Picklable callable: RGB PIL image -> float32 feature vector (runs in workers)."""

    def __init__(self, thumbnail: int, hsv_bins: tuple[int, int, int], orientation_bins: int) -> None:
        self.thumbnail = thumbnail
        self.hsv_bins = hsv_bins
        self.orientation_bins = orientation_bins

    def __call__(self, image: Image.Image) -> np.ndarray:
        return pixel_features(image, self.thumbnail, self.hsv_bins, self.orientation_bins)


def pixel_features(image: Image.Image, thumbnail: int = 8,
                   hsv_bins: tuple[int, int, int] = (16, 8, 8),
                   orientation_bins: int = 8) -> np.ndarray:
    """The feature vector of one image (see the module docstring for the definition)."""
    if not isinstance(image, Image.Image):
        raise TypeError(f"pixel_features needs a PIL image, got {type(image).__name__}")
    rgb = image.convert("RGB")
    if rgb.size != (WORK_SIDE, WORK_SIDE):
        rgb = rgb.resize((WORK_SIDE, WORK_SIDE), Image.BILINEAR)
    thumb = np.asarray(rgb.resize((thumbnail, thumbnail), Image.BOX), dtype=np.float32) / 255.0
    parts = [thumb.ravel(), _hsv_histograms(rgb, hsv_bins)]
    if orientation_bins:
        parts.append(_orientation_histogram(np.asarray(rgb, dtype=np.float32), orientation_bins))
    return np.concatenate(parts).astype(np.float32)


def _hsv_histograms(rgb: Image.Image, bins: tuple[int, int, int]) -> np.ndarray:
    """Per-channel histograms of PIL's 8-bit HSV, as fractions of the pixels."""
    hsv = np.asarray(rgb.convert("HSV"), dtype=np.int64).reshape(-1, 3)
    out = []
    for channel, count in enumerate(bins):
        index = hsv[:, channel] * count // 256
        out.append(np.bincount(index, minlength=count) / len(hsv))
    return np.concatenate(out)


def _orientation_histogram(rgb: np.ndarray, bins: int) -> np.ndarray:
    """Gradient magnitude summed per orientation bin over [0, pi), / (pixels * 255)."""
    grey = rgb.mean(axis=2)
    gx = np.zeros_like(grey)
    gy = np.zeros_like(grey)
    gx[:, 1:-1] = grey[:, 2:] - grey[:, :-2]
    gy[1:-1, :] = grey[2:, :] - grey[:-2, :]
    magnitude = np.hypot(gx, gy)
    angle = np.mod(np.arctan2(gy, gx), np.pi)
    index = np.minimum((angle * (bins / np.pi)).astype(np.int64), bins - 1)
    hist = np.bincount(index.ravel(), weights=magnitude.ravel(), minlength=bins)
    return hist / (grey.size * 255.0)


def _collate_arrays(batch: list[tuple[int, Any]]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(indices, ok mask, stacked features of the ok items) as numpy arrays."""
    indices = np.array([i for i, _ in batch], dtype=np.int64)
    ok = np.array([x is not None for _, x in batch], dtype=bool)
    feats = [x for _, x in batch if x is not None]
    stacked = np.stack(feats) if feats else np.zeros((0, 0), np.float32)
    return indices, ok, stacked
