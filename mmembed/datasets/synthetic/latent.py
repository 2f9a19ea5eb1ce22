"""The hidden truth of a synthetic dataset: item and user vectors, popularity, release times.

An item's latent vector is ``[text_only | shared | image_only | collab]``. Titles and tags
are drawn from ``text_only + shared``, cover images from ``shared + image_only``; the
``collab`` block shows in no content at all and is learnable only from behaviour.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# Stage ids for per-stage random streams: the same seed gives the same numbers in every
# stage no matter which stages ran before.
STAGE_ITEMS = 1
STAGE_TEXT = 2
STAGE_IMAGES = 3
STAGE_USERS = 4
STAGE_BEHAVIOUR = 5
STAGE_RELEASED = 6
STAGE_SPLIT = 7

BLOCK_DIMS: dict[str, int] = {"text_only": 8, "shared": 8, "image_only": 8, "collab": 8}
# Share of the preference score carried by each block (variance of u.v per block).
# Content (the first three) explains 70%, collaborative 30%.
BLOCK_WEIGHTS: dict[str, float] = {
    "text_only": 0.25, "shared": 0.25, "image_only": 0.20, "collab": 0.30,
}
NEW_ITEM_FRACTION = 0.05  # items released late: rare or absent in train
LATE_ITEM_FRACTION = 0.10  # items released during the train period
TRAIN_END = 0.9  # time split: train events before it, valid/test events after it
NEW_RELEASE_RANGE = (0.86, 0.97)
ZIPF_EXPONENT = 1.0
ZIPF_OFFSET = 10.0
POPULARITY_BIAS = 0.15  # weight of standardised log-popularity in the click score


def rng_for(seed: int, stage: int, chunk: int = 0) -> np.random.Generator:
    """A PCG64 generator for one (seed, stage, chunk): independent, reproducible streams."""
    return np.random.Generator(np.random.PCG64(np.random.SeedSequence([seed, stage, chunk])))


def block_slices() -> dict[str, slice]:
    """Column ranges of each block inside a latent vector."""
    out, start = {}, 0
    for name, dim in BLOCK_DIMS.items():
        out[name] = slice(start, start + dim)
        start += dim
    return out


LATENT_DIM = sum(BLOCK_DIMS.values())


@dataclass
class ItemTruth:
    """Per-item hidden state; arrays are indexed by item_id - 1 (N rows)."""

    latent: np.ndarray  # (N, LATENT_DIM) float32
    popularity: np.ndarray  # (N,) float64, sums to 1
    pop_bias: np.ndarray  # (N,) float32, added to the click score
    release_time: np.ndarray  # (N,) float64 in [0, 1)
    is_new: np.ndarray  # (N,) bool: released late, after most of the train period
    likes_level: np.ndarray  # (N,) int64 in 0..10
    views_level: np.ndarray  # (N,) int64 in 0..10

    def block(self, name: str) -> np.ndarray:
        return self.latent[:, block_slices()[name]]

    @property
    def text_content(self) -> np.ndarray:
        """What titles and tags are drawn from: ``[text_only | shared]``."""
        s = block_slices()
        return np.concatenate([self.latent[:, s["text_only"]], self.latent[:, s["shared"]]], 1)

    @property
    def image_content(self) -> np.ndarray:
        """What cover images are drawn from: ``[shared | image_only]``."""
        s = block_slices()
        return np.concatenate([self.latent[:, s["shared"]], self.latent[:, s["image_only"]]], 1)


def _levels(score: np.ndarray) -> np.ndarray:
    """Map a score to 0..10 by its rank (roughly equal-sized bins)."""
    ranks = np.argsort(np.argsort(score, kind="stable"), kind="stable")
    return np.minimum((ranks * 11) // len(score), 10).astype(np.int64)


def make_items(n_items: int, seed: int) -> ItemTruth:
    rng = rng_for(seed, STAGE_ITEMS)
    latent = rng.standard_normal((n_items, LATENT_DIM)).astype(np.float32)
    # Zipf-like popularity over a random ranking of the items (independent of content).
    rank = rng.permutation(n_items).astype(np.float64)
    popularity = (rank + ZIPF_OFFSET) ** -ZIPF_EXPONENT
    popularity /= popularity.sum()
    log_pop = np.log(popularity)
    pop_bias = (POPULARITY_BIAS * (log_pop - log_pop.mean()) / log_pop.std()).astype(np.float32)
    # Release times: most items exist from the start, some arrive during the train
    # period, a few ("new") arrive near or after its end.
    release = np.zeros(n_items)
    kind = rng.random(n_items)
    late = kind < LATE_ITEM_FRACTION + NEW_ITEM_FRACTION
    is_new = kind < NEW_ITEM_FRACTION
    release[late] = rng.uniform(0.0, TRAIN_END - 0.1, late.sum())
    release[is_new] = rng.uniform(*NEW_RELEASE_RANGE, is_new.sum())
    # Levels: noisy functions of popularity (views) and of popularity plus appeal (likes).
    views = _levels(log_pop + 0.5 * rng.standard_normal(n_items))
    appeal = latent[:, block_slices()["collab"]][:, 0]
    likes = _levels(log_pop + 0.5 * appeal + 0.8 * rng.standard_normal(n_items))
    return ItemTruth(latent, popularity, pop_bias, release, is_new, likes, views)


def block_scales() -> np.ndarray:
    """Per-dimension standard deviation of user vectors so that block b carries
    BLOCK_WEIGHTS[b] of the variance of u.v (item dims have unit variance)."""
    scales = np.empty(LATENT_DIM, dtype=np.float32)
    for name, sl in block_slices().items():
        scales[sl] = np.sqrt(BLOCK_WEIGHTS[name] / BLOCK_DIMS[name])
    return scales


def make_users(n_users: int, seed: int, chunk: int) -> np.ndarray:
    """User preference vectors of one chunk, (n_users, LATENT_DIM) float32, var(u.v) = 1."""
    rng = rng_for(seed, STAGE_USERS, chunk)
    return (rng.standard_normal((n_users, LATENT_DIM)) * block_scales()).astype(np.float32)
