"""``concat_pca``: concatenate the encoders' features and project them with PCA.

What happens, in order:

1. each encoder's block is L2-normalised row by row (``normalize=True``, the default) so
   that no encoder dominates the variance just by its scale;
2. rows an encoder marked invalid (missing title, missing cover ...) are replaced by that
   block's mean over its valid rows (computed at fit time and stored), so an item with one
   missing modality still gets a vector from the others, sitting at the centre of the
   missing block instead of at an arbitrary zero;
3. PCA is fitted on the items valid in *every* block only (mean-filled rows would shrink
   the variance), exactly and deterministically: the eigen-decomposition of the
   float64 covariance (or an SVD when there are fewer items than features), with each
   component's sign fixed so that its largest-magnitude coefficient is positive;
4. ``transform`` centres, projects to ``dim`` and returns float32.

The number of mean-filled rows per block is logged and kept in ``n_filled_``.
"""
from __future__ import annotations

import logging
from typing import Any, Mapping

import numpy as np

from ctr_eval.checks import check_positive_int
from mmembed.fusion import register_fusion
from mmembed.fusion.base import FeatureBlock, FusionHead, as_blocks

logger = logging.getLogger(__name__)

_CHUNK_ROWS = 8192  # rows per float64 chunk: bounded memory at full scale


@register_fusion("concat_pca")
class ConcatPCA(FusionHead):
    """Concatenate (optionally L2-normalised) encoder features, then PCA to ``dim``."""

    tiny_params = {"dim": 4}

    def __init__(self, dim: int = 128, normalize: bool = True) -> None:
        self.dim = dim
        self.normalize = normalize

    def _check_params(self) -> None:
        check_positive_int("concat_pca: dim", self.dim)
        if not isinstance(self.normalize, bool):
            raise TypeError(f"concat_pca: normalize must be True or False, got {self.normalize!r}")

    # -- preparation shared by fit and transform ----------------------------------------
    def _prepared_block(self, block: FeatureBlock, rows: slice, fill: np.ndarray | None) -> np.ndarray:
        x = block.vectors[rows].astype(np.float64)
        if self.normalize:
            norms = np.linalg.norm(x, axis=1, keepdims=True)
            x /= np.maximum(norms, 1e-12)
        if fill is not None:
            x[~block.valid[rows]] = fill
        return x

    def _concatenated(self, blocks: list[FeatureBlock], rows: slice, fills: list | None) -> np.ndarray:
        return np.concatenate(
            [self._prepared_block(b, rows, None if fills is None else fills[i])
             for i, b in enumerate(blocks)],
            axis=1,
        )

    def check_input_widths(self, widths: Mapping[str, int]) -> None:
        self._check_params()
        n_features = sum(widths.values())
        if self.dim > n_features:
            layout = ", ".join(f"{name}: {width}" for name, width in widths.items())
            raise ValueError(
                f"concat_pca: dim={self.dim} exceeds the number of concatenated features "
                f"({n_features}; {layout}); choose dim <= {n_features}"
            )

    # -- fit ---------------------------------------------------------------------------
    def fit(self, features: Mapping[str, Any], sequences: Any = None) -> "ConcatPCA":
        blocks = as_blocks(features)
        self.check_input_widths({b.name: b.vectors.shape[1] for b in blocks})
        n_items = len(blocks[0].vectors)
        for b in blocks:
            if not b.valid.any():
                raise ValueError(
                    f"concat_pca: encoder {b.name!r} has no valid item among {n_items}; "
                    "drop it or fix its input"
                )
        fit_mask = np.logical_and.reduce([b.valid for b in blocks])
        n_fit = int(fit_mask.sum())
        if self.dim > n_fit:
            raise ValueError(
                f"concat_pca: dim={self.dim} exceeds the number of items usable for "
                f"fitting ({n_fit} of {n_items} are valid in every encoder); PCA needs "
                f"at least dim items"
            )

        # Per-block fill values: mean of the (normalised) valid rows.
        fills = []
        for b in blocks:
            total = np.zeros(b.vectors.shape[1])
            for start in range(0, n_items, _CHUNK_ROWS):
                rows = slice(start, start + _CHUNK_ROWS)
                x = self._prepared_block(b, rows, None)
                total += x[b.valid[rows]].sum(axis=0)
            fills.append(total / b.valid.sum())

        mean, components, variance, total_variance = _exact_pca(
            lambda rows: self._concatenated(blocks, rows, fills), fit_mask, self.dim
        )
        self.block_names_ = [b.name for b in blocks]
        self.block_dims_ = [int(b.vectors.shape[1]) for b in blocks]
        self.block_fill_ = fills
        self.n_filled_ = {b.name: int((~b.valid).sum()) for b in blocks}
        self.n_fit_items_ = n_fit
        self.mean_ = mean
        self.components_ = components
        self.explained_variance_ = variance
        self.explained_variance_ratio_ = variance / total_variance if total_variance > 0 else variance * 0
        self.n_features_in_ = sum(self.block_dims_)
        filled = {k: v for k, v in self.n_filled_.items() if v}
        logger.info(
            "concat_pca: fitted on %d of %d items (%s -> %d dims, %.1f%% of variance kept)%s",
            n_fit, n_items, ", ".join(f"{b.name}: {b.vectors.shape[1]}" for b in blocks), self.dim, 100 * float(self.explained_variance_ratio_.sum()),
            f"; invalid rows filled with the block mean: {filled}" if filled else "",
        )
        return self

    # -- transform ---------------------------------------------------------------------
    def transform(self, features: Mapping[str, Any]) -> np.ndarray:
        self._check_fitted()
        blocks = _match_blocks(as_blocks(features), self.block_names_, self.block_dims_)
        n_items = len(blocks[0].vectors)
        out = np.empty((n_items, self.dim), dtype=np.float32)
        for start in range(0, n_items, _CHUNK_ROWS):
            rows = slice(start, start + _CHUNK_ROWS)
            x = self._concatenated(blocks, rows, self.block_fill_)
            out[rows] = (x - self.mean_) @ self.components_.T
        filled = {b.name: int((~b.valid).sum()) for b in blocks if not b.valid.all()}
        if filled:
            logger.info("concat_pca: invalid rows filled with the block mean: %s", filled)
        return out

    # -- persistence ---------------------------------------------------------------------
    def _get_state(self) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        state = {
            "block_names": self.block_names_,
            "block_dims": self.block_dims_,
            "n_filled": self.n_filled_,
            "n_fit_items": self.n_fit_items_,
            "n_features_in": self.n_features_in_,
        }
        arrays = {
            "mean": self.mean_,
            "components": self.components_,
            "explained_variance": self.explained_variance_,
            "explained_variance_ratio": self.explained_variance_ratio_,
        }
        for i, fill in enumerate(self.block_fill_):
            arrays[f"fill_{i}"] = fill
        return state, arrays

    def _set_state(self, state: dict[str, Any], arrays: Mapping[str, np.ndarray]) -> None:
        self.block_names_ = list(state["block_names"])
        self.block_dims_ = [int(d) for d in state["block_dims"]]
        self.n_filled_ = dict(state["n_filled"])
        self.n_fit_items_ = int(state["n_fit_items"])
        self.n_features_in_ = int(state["n_features_in"])
        self.mean_ = arrays["mean"]
        self.components_ = arrays["components"]
        self.explained_variance_ = arrays["explained_variance"]
        self.explained_variance_ratio_ = arrays["explained_variance_ratio"]
        self.block_fill_ = [arrays[f"fill_{i}"] for i in range(len(self.block_names_))]


def _match_blocks(blocks: list[FeatureBlock], names: list[str], dims: list[int]) -> list[FeatureBlock]:
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


def _exact_pca(rows_of, fit_mask: np.ndarray, dim: int):
    """Deterministic PCA of the rows selected by ``fit_mask``.

    ``rows_of(slice)`` returns the prepared float64 rows of that slice; chunks keep memory
    bounded. Returns (mean, components (dim, D), explained variance (dim,), total variance).
    """
    n_items = len(fit_mask)
    n_fit = int(fit_mask.sum())
    chunks = [slice(s, s + _CHUNK_ROWS) for s in range(0, n_items, _CHUNK_ROWS)]
    total = None
    for rows in chunks:
        x = rows_of(rows)[fit_mask[rows]]
        total = x.sum(axis=0) if total is None else total + x.sum(axis=0)
    mean = total / n_fit
    n_features = len(mean)
    denominator = max(n_fit - 1, 1)
    if n_fit >= n_features:
        cov = np.zeros((n_features, n_features))
        for rows in chunks:
            x = rows_of(rows)[fit_mask[rows]] - mean
            cov += x.T @ x
        cov /= denominator
        eigvals, eigvecs = np.linalg.eigh(cov)
        order = np.argsort(eigvals)[::-1][:dim]
        variance = np.clip(eigvals[order], 0.0, None)
        components = eigvecs[:, order].T
        total_variance = float(np.clip(eigvals, 0.0, None).sum())
    else:
        x = np.concatenate([rows_of(rows)[fit_mask[rows]] for rows in chunks]) - mean
        _, singular, vt = np.linalg.svd(x, full_matrices=False)
        variance = singular[:dim] ** 2 / denominator
        components = vt[:dim]
        total_variance = float((singular**2).sum() / denominator)
    # Fix each component's sign: its largest-magnitude coefficient is positive.
    pivots = np.argmax(np.abs(components), axis=1)
    signs = np.sign(components[np.arange(len(components)), pivots])
    signs[signs == 0] = 1.0
    return mean, components * signs[:, None], variance, total_variance
