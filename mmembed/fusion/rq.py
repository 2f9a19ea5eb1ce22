"""``rq``: residual-quantized semantic IDs (RQ-KMeans) over the official recipe's vectors.

The encoders' features go through ``concat_pca`` (same options) to ``dim``; then, level
by level, k-means with ``codes`` centroids is fitted on what the levels before left over
(the residual), and each item gets the index of its centroid at every level. The output is
the quantized reconstruction, the sum of an item's centroids over the levels: a ``dim``-wide
table (a valid Task 1 embedding); ``codes_`` holds the (items, levels) integer codes, the
item's semantic ID, for CTR models that embed them as categorical features.

The codes of the fitted items are ``codes_``; ``mmembed.extract`` keeps them
(``ItemEmbeddings.codes``) and ``save_item_info`` writes them beside the table as
``item_codes.parquet`` (row i = item i, keyed by item_id), which ``ctr_eval`` reads for a
Task 2 model with ``item_codes: true``.

``balanced=True`` assigns items to centroids under a capacity of ceil(items / codes) per
centroid (greedily, nearest pairs first; centroids are then the means of their members),
which spreads items over the codebook and lowers collisions (items sharing every level's
code) at some cost in reconstruction error. ``collision_rate_`` is the share of items
whose full code another item also has. Collisions are counted and left (such items share
their code embeddings), or with ``unique_ids=True`` resolved as TIGER does: a last level
numbers the items sharing a code (0, 1, ...), so every item's code is its own; the
reconstruction uses the quantization levels only.

Diagnostics after ``fit`` (``diagnostics()``, shown in a recipe's report):
``codebook_usage_`` (share of each level's codes in use), ``collision_rate_``,
``reconstruction_error_`` (mean squared error of the reconstruction over the PCA vectors'
mean squared norm). Not done yet: RQ-VAE (a trained encoder with commitment loss).
"""
from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import numpy as np

from ctr_eval.checks import check_positive_int
from mmembed.fusion import register_fusion
from mmembed.fusion.concat_pca import ConcatPCA

logger = logging.getLogger(__name__)


@register_fusion("rq")
class ResidualQuantizer(ConcatPCA):
    """RQ-KMeans semantic IDs over ``concat_pca`` vectors; outputs the reconstruction."""

    tiny_params = {"dim": 4, "levels": 2, "codes": 4}
    makes_codes = True

    def __init__(
        self,
        dim: int = 128,
        levels: int = 3,
        codes: int = 256,
        balanced: bool = False,
        unique_ids: bool = False,
        seed: int = 0,
        normalize: bool = True,
        standardize: str | None = None,
        weights: Mapping[str, float] | None = None,
        whiten: bool = False,
        normalize_output: bool = False,
    ) -> None:
        self._store_params(locals())

    def _check_params(self) -> None:
        super()._check_params()
        check_positive_int("rq: levels", self.levels)
        check_positive_int("rq: codes", self.codes)
        for name in ("balanced", "unique_ids"):
            if not isinstance(getattr(self, name), bool):
                raise TypeError(f"rq: {name} must be True or False, got {getattr(self, name)!r}")

    def fit(self, features: Mapping[str, Any], sequences: Any = None) -> ResidualQuantizer:
        super().fit(features)
        x = super().transform(features).astype(np.float64)
        if self.codes > len(x):
            raise ValueError(f"rq: codes={self.codes} exceeds the {len(x)} items; choose codes <= {len(x)}")
        residual, centroids, codes = x.copy(), [], []
        for level in range(self.levels):
            centres, assigned = kmeans(residual, self.codes, seed=self.seed * 1000 + level,
                                        balanced=self.balanced)
            centroids.append(centres.astype(np.float32))
            codes.append(assigned)
            residual -= centres[assigned]
        self.centroids_ = centroids
        quantized = np.stack(codes, axis=1).astype(np.int32)
        self.codebook_usage_, self.collision_rate_ = code_statistics(quantized, self.codes)
        self.codes_ = with_unique_level(quantized) if self.unique_ids else quantized
        self.reconstruction_error_ = float((residual ** 2).sum(axis=1).mean()
                                           / max((x ** 2).sum(axis=1).mean(), 1e-12))
        logger.info("rq: %d levels x %d codes%s; codebook use %s; collisions %.1f%% of items; "
                    "relative reconstruction error %.3f", self.levels, self.codes,
                    " (balanced)" if self.balanced else "",
                    ", ".join(f"{u:.0%}" for u in self.codebook_usage_),
                    100 * self.collision_rate_, self.reconstruction_error_)
        return self

    def diagnostics(self) -> dict[str, Any]:
        return quantizer_diagnostics(self)

    def transform(self, features: Mapping[str, Any]) -> np.ndarray:
        """The quantized reconstruction (items, dim): each item's nearest centroid per level
        (``encode``), summed."""
        return self.reconstruct(self.encode(features))

    def encode(self, features: Mapping[str, Any]) -> np.ndarray:
        """(items, levels) codes: the nearest centroid of the residual at each level (with
        ``unique_ids``, one more level numbering the given items that share a code)."""
        self._check_fitted()
        residual = super().transform(features).astype(np.float64)
        out = np.empty((len(residual), self.levels), dtype=np.int32)
        for level, centres in enumerate(self.centroids_):
            out[:, level] = nearest(residual, centres.astype(np.float64))
            residual -= centres[out[:, level]]
        return with_unique_level(out) if self.unique_ids else out

    def reconstruct(self, codes: np.ndarray) -> np.ndarray:
        """The sum of each row's centroids over the levels, float32 (rows, dim)."""
        self._check_fitted()
        codes = quantization_levels(self, codes)
        return sum(c[codes[:, i]] for i, c in enumerate(self.centroids_)).astype(np.float32)


def quantization_levels(head: Any, codes: np.ndarray) -> np.ndarray:
    """The quantization levels of (rows, levels [+ 1 with unique_ids]) codes, checked."""
    codes = np.asarray(codes)
    width = head.levels + int(head.unique_ids)
    if codes.ndim != 2 or codes.shape[1] not in (head.levels, width):
        raise ValueError(f"{head.name}: codes must have shape (items, {width}), got {codes.shape}")
    return codes[:, :head.levels]


def with_unique_level(codes: np.ndarray) -> np.ndarray:
    """(items, levels + 1): ``codes`` with a last level numbering, in row order, the items
    that share every level's code (0, 1, ...): every item's code becomes its own."""
    _, group = np.unique(codes, axis=0, return_inverse=True)
    group = group.reshape(-1)
    order = np.argsort(group, kind="stable")
    starts = np.searchsorted(group[order], group[order], side="left")
    rank = np.empty(len(codes), dtype=np.int64)
    rank[order] = np.arange(len(codes)) - starts
    return np.concatenate([codes, rank[:, None].astype(codes.dtype)], axis=1)


def quantizer_diagnostics(head: Any) -> dict[str, Any]:
    """What a report shows of a fitted semantic-ID head (rq, rq_vae)."""
    head._check_fitted()
    collisions = ("resolved: a last level numbers the items that share a code, so every item's code is its own"
                  if head.unique_ids else
                  "counted, not resolved: items sharing a full code share its embedding rows")
    return {"levels": head.levels, "codes": head.codes, "balanced": bool(getattr(head, "balanced", False)),
            "unique_ids": head.unique_ids, "codebook_usage": head.codebook_usage_,
            "collision_rate": head.collision_rate_, "collisions": collisions,
            "reconstruction_error": head.reconstruction_error_}


def code_statistics(codes: np.ndarray, n_codes: int) -> tuple[list[float], float]:
    """(share of each level's ``n_codes`` codes in use, share of items whose full code
    another item also has) of (items, levels) codes."""
    usage = [float(len(np.unique(codes[:, level])) / n_codes) for level in range(codes.shape[1])]
    _, counts = np.unique(codes, axis=0, return_counts=True)
    return usage, float(counts[counts > 1].sum() / max(len(codes), 1))


def nearest(x: np.ndarray, centres: np.ndarray, chunk: int = 8192) -> np.ndarray:
    out = np.empty(len(x), dtype=np.int64)
    norms = (centres ** 2).sum(axis=1)
    for start in range(0, len(x), chunk):
        part = x[start: start + chunk]
        out[start: start + len(part)] = np.argmin(norms[None, :] - 2.0 * part @ centres.T, axis=1)
    return out


def kmeans(x: np.ndarray, k: int, seed: int, balanced: bool) -> tuple[np.ndarray, np.ndarray]:
    """(centres (k, d), assignment (n,)) of k-means on ``x``; with ``balanced`` the
    assignment respects a capacity of ceil(n / k) per centre."""
    from sklearn.cluster import KMeans

    km = KMeans(n_clusters=k, n_init=1, random_state=seed).fit(x)
    centres, assigned = km.cluster_centers_, km.labels_.astype(np.int64)
    if balanced:
        assigned = _capacity_assignment(x, centres, -(-len(x) // k))
        for c in range(k):
            members = assigned == c
            if members.any():
                centres[c] = x[members].mean(axis=0)
    return centres, assigned


def _capacity_assignment(x: np.ndarray, centres: np.ndarray, capacity: int) -> np.ndarray:
    """Nearest (item, centre) pairs first, each centre taking at most ``capacity`` items."""
    d = (centres ** 2).sum(axis=1)[None, :] - 2.0 * x @ centres.T  # + |x|^2, same per row
    order = np.argsort(d, axis=None, kind="stable")
    assigned = np.full(len(x), -1, dtype=np.int64)
    load = np.zeros(len(centres), dtype=np.int64)
    left = len(x)
    for flat in order:
        item, centre = divmod(int(flat), len(centres))
        if assigned[item] < 0 and load[centre] < capacity:
            assigned[item], load[centre] = centre, load[centre] + 1
            left -= 1
            if not left:
                break
    return assigned
