"""Machinery shared by the PCA fusion heads (``concat_pca``, ``modality_pca``).

Both heads prepare each encoder block the same way before any PCA, every statistic being
fitted on the block's own valid rows (float64 throughout):

1. ``normalize``: each row is divided by its L2 norm;
2. rows the encoder marked invalid are replaced by the block's mean valid row (``fill``);
3. ``standardize``: ``"column"`` subtracts each column's mean and divides by its standard
   deviation (population, ddof=0, as scikit-learn's StandardScaler; a constant column is
   only centred); ``"block"`` subtracts the column means and divides the whole block by
   the square root of its total variance (the sum of its column variances), so that every
   block carries a total variance of exactly 1.

Filled rows sit at the block mean, so after standardisation they are zero rows.

The PCA is exact and deterministic: the eigen-decomposition of the float64 covariance
(an SVD when there are fewer rows than features), each component's sign fixed so that
its largest-magnitude coefficient is positive. Everything runs in chunks of rows, so
memory stays bounded at full scale.
"""
from __future__ import annotations

import logging
import math
import numbers
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from mmembed.fusion.base import FeatureBlock, FusionHead, as_blocks

logger = logging.getLogger(__name__)

CHUNK_ROWS = 8192  # rows per float64 chunk: bounded memory at full scale
STANDARDIZE_CHOICES = (None, "column", "block")
#: A component whose variance is below this fraction of the largest is numerically zero:
#: whitening leaves it unscaled instead of blowing rounding noise up to unit variance.
TINY_VARIANCE = 1e-12


def chunks(n_items: int) -> list[slice]:
    return [slice(start, start + CHUNK_ROWS) for start in range(0, n_items, CHUNK_ROWS)]


@dataclass(frozen=True)
class BlockPrep:
    """The fitted preparation of one block: fill row, and the standardisation (or None)."""

    fill: np.ndarray
    shift: np.ndarray | None = None
    scale: np.ndarray | None = None


def prepared_rows(block: FeatureBlock, rows: slice, normalize: bool, prep: BlockPrep | None) -> np.ndarray:
    """Steps 1-3 of the module docstring for ``rows`` of ``block`` (step 1 only when
    ``prep`` is None, as while the fill row itself is being fitted)."""
    x = block.vectors[rows].astype(np.float64)
    if normalize:
        x /= np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    if prep is None:
        return x
    x[~block.valid[rows]] = prep.fill
    if prep.shift is not None:
        x -= prep.shift
        x /= prep.scale
    return x


def fit_block_prep(block: FeatureBlock, normalize: bool, standardize: str | None) -> BlockPrep:
    """Fill row and standardisation of ``block``, from its valid rows."""
    n_valid = int(block.valid.sum())
    total = np.zeros(block.vectors.shape[1])
    for rows in chunks(len(block.vectors)):
        total += prepared_rows(block, rows, normalize, None)[block.valid[rows]].sum(axis=0)
    mean = total / n_valid
    if standardize is None:
        return BlockPrep(mean)
    squares = np.zeros_like(mean)
    for rows in chunks(len(block.vectors)):
        deviation = prepared_rows(block, rows, normalize, None)[block.valid[rows]] - mean
        squares += (deviation**2).sum(axis=0)
    variance = squares / n_valid
    if standardize == "column":
        scale = np.sqrt(variance)
        scale[scale == 0] = 1.0
    else:
        block_std = math.sqrt(float(variance.sum()))
        scale = np.full_like(mean, block_std if block_std > 0 else 1.0)
    return BlockPrep(mean, mean.copy(), scale)


def exact_pca(rows_of: Callable[[slice], np.ndarray], fit_mask: np.ndarray, dim: int):
    """Deterministic PCA of the rows selected by ``fit_mask``.

    ``rows_of(slice)`` returns the prepared float64 rows of that slice. Returns (mean,
    components (k, D), explained variance (k,), total variance) with k = dim, or fewer
    when there are fewer fit rows than that.
    """
    n_fit = int(fit_mask.sum())
    parts = chunks(len(fit_mask))
    total = None
    for rows in parts:
        x = rows_of(rows)[fit_mask[rows]]
        total = x.sum(axis=0) if total is None else total + x.sum(axis=0)
    mean = total / n_fit
    n_features = len(mean)
    denominator = max(n_fit - 1, 1)
    if n_fit >= n_features:
        cov = np.zeros((n_features, n_features))
        for rows in parts:
            x = rows_of(rows)[fit_mask[rows]] - mean
            cov += x.T @ x
        cov /= denominator
        eigvals, eigvecs = np.linalg.eigh(cov)
        order = np.argsort(eigvals)[::-1][:dim]
        variance = np.clip(eigvals[order], 0.0, None)
        components = eigvecs[:, order].T
        total_variance = float(np.clip(eigvals, 0.0, None).sum())
    else:
        x = np.concatenate([rows_of(rows)[fit_mask[rows]] for rows in parts]) - mean
        _, singular, vt = np.linalg.svd(x, full_matrices=False)
        variance = singular[:dim] ** 2 / denominator
        components = vt[:dim]
        total_variance = float((singular**2).sum() / denominator)
    # Fix each component's sign: its largest-magnitude coefficient is positive.
    pivots = np.argmax(np.abs(components), axis=1)
    signs = np.sign(components[np.arange(len(components)), pivots])
    signs[signs == 0] = 1.0
    return mean, components * signs[:, None], variance, total_variance


def variance_ratio(variance: np.ndarray, total_variance: float) -> np.ndarray:
    return variance / total_variance if total_variance > 0 else variance * 0


def whitening_divisor(variance: np.ndarray) -> np.ndarray:
    """sqrt(explained variance) per component, 1 where that variance is numerically zero."""
    variance = np.asarray(variance, dtype=np.float64)
    largest = float(variance.max()) if variance.size else 0.0
    keep = variance > TINY_VARIANCE * largest
    return np.where(keep, np.sqrt(np.where(keep, variance, 1.0)), 1.0)


def unit_rows(y: np.ndarray) -> np.ndarray:
    """Rows divided by their L2 norm (an all-zero row stays zero)."""
    return y / np.maximum(np.linalg.norm(y, axis=1, keepdims=True), 1e-12)


def match_blocks(blocks: list[FeatureBlock], names: list[str], dims: list[int]) -> list[FeatureBlock]:
    """Reorder ``blocks`` to the fitted order; refuse other names or dimensions."""
    by_name = {b.name: b for b in blocks}
    if sorted(by_name) != sorted(names):
        raise ValueError(
            f"transform got features for encoders {sorted(by_name)}, but the head was "
            f"fitted on {names}"
        )
    ordered = [by_name[n] for n in names]
    for block, dim in zip(ordered, dims):
        if block.vectors.shape[1] != dim:
            raise ValueError(
                f"features[{block.name!r}] has {block.vectors.shape[1]} dims, but the head "
                f"was fitted with {dim}"
            )
    return ordered


def check_flag(head: str, name: str, value: Any) -> None:
    if not isinstance(value, bool):
        raise TypeError(f"{head}: {name} must be True or False, got {value!r}")


def check_standardize(head: str, value: Any) -> None:
    if value is not None and not isinstance(value, str):
        raise TypeError(f"{head}: standardize must be None, 'column' or 'block', got {value!r}")
    if value not in STANDARDIZE_CHOICES:
        raise ValueError(f"{head}: standardize must be None, 'column' or 'block', got {value!r}")


def check_weights(head: str, weights: Any) -> None:
    """``weights``: None or {encoder name: finite number > 0}."""
    if weights is None:
        return
    if not isinstance(weights, Mapping):
        raise TypeError(
            f"{head}: weights must be None or a mapping {{encoder name: weight}}, "
            f"got {type(weights).__name__} {weights!r}"
        )
    for name, weight in weights.items():
        if not isinstance(name, str):
            raise TypeError(f"{head}: weights keys must be encoder names (str), got {name!r}")
        if isinstance(weight, bool) or not isinstance(weight, numbers.Real):
            raise TypeError(f"{head}: weights[{name!r}] must be a number, got {weight!r}")
        if not (math.isfinite(weight) and weight > 0):
            raise ValueError(f"{head}: weights[{name!r}] must be a finite number > 0, got {weight!r}")


def check_names(head: str, option: str, given: Mapping[str, Any], encoders: list[str]) -> None:
    """Refuse names in ``given`` (an option's mapping) that are not among ``encoders``."""
    unknown = sorted(set(given) - set(encoders))
    if unknown:
        raise ValueError(
            f"{head}: {option} names encoder(s) {unknown} that are not among the features; "
            f"the encoders are {list(encoders)}"
        )


class BlockPCAHead(FusionHead):
    """Base of the PCA heads: their shared options, block preparation and saved state.

    Subclasses store ``normalize``, ``standardize``, ``weights``, ``whiten`` and
    ``normalize_output`` in ``__init__`` and call these helpers from fit/transform.
    """

    def _check_common_params(self) -> None:
        check_flag(self.name, "normalize", self.normalize)
        check_standardize(self.name, self.standardize)
        check_weights(self.name, self.weights)
        check_flag(self.name, "whiten", self.whiten)
        check_flag(self.name, "normalize_output", self.normalize_output)

    def _valid_blocks(self, features: Mapping[str, Any]) -> list[FeatureBlock]:
        """The features as blocks, checked for fitting: widths, weights, some valid rows."""
        blocks = as_blocks(features)
        self.check_input_widths({b.name: b.vectors.shape[1] for b in blocks})
        for b in blocks:
            if not b.valid.any():
                raise ValueError(
                    f"{self.name}: encoder {b.name!r} has no valid item among "
                    f"{len(b.vectors)}; drop it or fix its input"
                )
        return blocks

    def _fit_preparation(self, blocks: list[FeatureBlock]) -> list[BlockPrep]:
        return [fit_block_prep(b, self.normalize, self.standardize) for b in blocks]

    def _store_preparation(self, blocks: list[FeatureBlock], preps: list[BlockPrep]) -> None:
        weights = self.weights or {}
        self.block_names_ = [b.name for b in blocks]
        self.block_dims_ = [int(b.vectors.shape[1]) for b in blocks]
        self.block_fill_ = [p.fill for p in preps]
        self.block_shift_ = [p.shift for p in preps]
        self.block_scale_ = [p.scale for p in preps]
        self.block_weights_ = [float(weights.get(b.name, 1.0)) for b in blocks]
        self.n_filled_ = {b.name: int((~b.valid).sum()) for b in blocks}

    def _preparation(self) -> list[BlockPrep]:
        return [BlockPrep(f, s, c) for f, s, c in zip(self.block_fill_, self.block_shift_, self.block_scale_)]

    def _fitted_blocks(self, features: Mapping[str, Any]) -> list[FeatureBlock]:
        self._check_fitted()
        blocks = match_blocks(as_blocks(features), self.block_names_, self.block_dims_)
        filled = {b.name: int((~b.valid).sum()) for b in blocks if not b.valid.all()}
        if filled:
            logger.info("%s: invalid rows filled with the block mean: %s", self.name, filled)
        return blocks

    def _set_preparation_state(self, state: Mapping[str, Any], arrays: Mapping[str, np.ndarray]) -> None:
        """The preparation part of a folder saved before 5 Dec 2026; heads saved before
        weights and standardisation existed have neither (weights 1, no standardisation)."""
        self.block_names_ = list(state["block_names"])
        self.block_dims_ = [int(d) for d in state["block_dims"]]
        count = len(self.block_names_)
        self.block_weights_ = [float(w) for w in state.get("block_weights", [1.0] * count)]
        self.n_filled_ = dict(state["n_filled"])
        self.block_fill_ = [arrays[f"fill_{i}"] for i in range(count)]
        self.block_shift_ = [arrays.get(f"shift_{i}") for i in range(count)]
        self.block_scale_ = [arrays.get(f"scale_{i}") for i in range(count)]
