"""``concat_pca``: concatenate the encoders' features and project them with PCA.

What happens, in order:

1. each encoder's block is L2-normalised row by row (``normalize=True``, the default) so
   that no encoder dominates the variance just by its scale;
2. rows an encoder marked invalid (missing title, missing cover ...) are replaced by that
   block's mean over its valid rows (computed at fit time and stored), so an item with one
   missing modality still gets a vector from the others, sitting at the centre of the
   missing block instead of at an arbitrary zero;
3. optionally each block is standardised (``standardize``) and multiplied by its weight
   (``weights``), then the blocks are concatenated;
4. PCA is fitted on the items valid in *every* block only (mean-filled rows would shrink
   the variance), exactly and deterministically (see ``mmembed/fusion/_pca.py``);
5. ``transform`` centres, projects to ``dim``, optionally whitens and L2-normalises the
   output, and returns float32.

With the default options the head is the plain normalise-concatenate-PCA it always was:
same outputs, and heads saved before the options existed load and give them unchanged.
The number of mean-filled rows per block is logged and kept in ``n_filled_``.
"""
from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import numpy as np

from ctr_eval.checks import check_positive_int
from mmembed.fusion import register_fusion
from mmembed.fusion._pca import (
    BlockPCAHead,
    BlockPrep,
    check_names,
    chunks,
    exact_pca,
    match_blocks,
    prepared_rows,
    unit_rows,
    variance_ratio,
    whitening_divisor,
)
from mmembed.fusion.base import FeatureBlock

logger = logging.getLogger(__name__)

_match_blocks = match_blocks  # its former home: code elsewhere may still import it from here


@register_fusion("concat_pca")
class ConcatPCA(BlockPCAHead):
    """Concatenate (optionally L2-normalised) encoder features, then PCA to ``dim``.

    Options (each block's statistics come from its valid rows, after ``normalize``):

    - ``dim``: output width, at most the total input width and the number of items
      valid in every encoder.
    - ``normalize`` (default True): divide each block's rows by their L2 norm.
    - ``standardize`` (default None): ``"column"`` z-scores every feature column
      ((x - mean) / std, population std, a constant column only centred);
      ``"block"`` centres the block and divides it by sqrt(its total variance), so each
      encoder enters with total variance 1 whatever its width.
    - ``weights`` (default None): {encoder name: number > 0} multiplying that block after
      the steps above (unnamed encoders weigh 1; a block weighted w carries w**2 times its
      variance into the PCA). A name that is not among the features is an error.
    - ``whiten`` (default False): divide output component k by sqrt(explained_variance_[k])
      (as scikit-learn's PCA(whiten=True)), so that every component has unit variance on
      the fit rows; numerically zero components are left unscaled.
    - ``normalize_output`` (default False): divide each output row by its L2 norm (after
      whitening).
    """

    tiny_params = {"dim": 4}

    def __init__(
        self,
        dim: int = 128,
        normalize: bool = True,
        standardize: str | None = None,
        weights: Mapping[str, float] | None = None,
        whiten: bool = False,
        normalize_output: bool = False,
    ) -> None:
        self._store_params(locals())

    def _check_params(self) -> None:
        check_positive_int("concat_pca: dim", self.dim)
        self._check_common_params()

    def check_input_widths(self, widths: Mapping[str, int]) -> None:
        self._check_params()
        check_names("concat_pca", "weights", self.weights or {}, list(widths))
        n_features = sum(widths.values())
        if self.dim > n_features:
            layout = ", ".join(f"{name}: {width}" for name, width in widths.items())
            raise ValueError(
                f"concat_pca: dim={self.dim} exceeds the number of concatenated features "
                f"({n_features}; {layout}); choose dim <= {n_features}"
            )

    def _joined(self, blocks: list[FeatureBlock], rows: slice, preps: list[BlockPrep],
                weights: list[float]) -> np.ndarray:
        parts = []
        for block, prep, weight in zip(blocks, preps, weights):
            x = prepared_rows(block, rows, self.normalize, prep)
            parts.append(x * weight if weight != 1.0 else x)
        return np.concatenate(parts, axis=1)

    # -- fit ---------------------------------------------------------------------------
    def fit(self, features: Mapping[str, Any], sequences: Any = None) -> ConcatPCA:
        blocks = self._valid_blocks(features)
        n_items = len(blocks[0].vectors)
        fit_mask = np.logical_and.reduce([b.valid for b in blocks])
        n_fit = int(fit_mask.sum())
        if self.dim > n_fit:
            raise ValueError(
                f"concat_pca: dim={self.dim} exceeds the number of items usable for "
                f"fitting ({n_fit} of {n_items} are valid in every encoder); PCA needs "
                f"at least dim items"
            )
        preps = self._fit_preparation(blocks)
        weights = [float((self.weights or {}).get(b.name, 1.0)) for b in blocks]
        mean, components, variance, total_variance = exact_pca(
            lambda rows: self._joined(blocks, rows, preps, weights), fit_mask, self.dim
        )
        self._store_preparation(blocks, preps)
        self.n_fit_items_ = n_fit
        self.mean_ = mean
        self.components_ = components
        self.explained_variance_ = variance
        self.explained_variance_ratio_ = variance_ratio(variance, total_variance)
        self.n_features_in_ = sum(self.block_dims_)
        filled = {k: v for k, v in self.n_filled_.items() if v}
        logger.info(
            "concat_pca: fitted on %d of %d items (%s -> %d dims, %.1f%% of variance kept)%s",
            n_fit, n_items, ", ".join(f"{b.name}: {b.vectors.shape[1]}" for b in blocks), self.dim,
            100 * float(self.explained_variance_ratio_.sum()),
            f"; invalid rows filled with the block mean: {filled}" if filled else "",
        )
        return self

    # -- transform ---------------------------------------------------------------------
    def transform(self, features: Mapping[str, Any]) -> np.ndarray:
        blocks = self._fitted_blocks(features)
        preps = self._preparation()
        n_items = len(blocks[0].vectors)
        out = np.empty((n_items, self.dim), dtype=np.float32)
        divisor = whitening_divisor(self.explained_variance_) if self.whiten else None
        for rows in chunks(n_items):
            x = self._joined(blocks, rows, preps, self.block_weights_)
            y = (x - self.mean_) @ self.components_.T
            if divisor is not None:
                y /= divisor
            out[rows] = unit_rows(y) if self.normalize_output else y
        return out

    # -- persistence ---------------------------------------------------------------------
    def _load_state_v1(self, state: dict[str, Any], arrays: Mapping[str, np.ndarray]) -> None:
        """A folder saved before 5 Dec 2026 (per-head layout)."""
        self._set_preparation_state(state, arrays)
        self.n_fit_items_ = int(state["n_fit_items"])
        self.n_features_in_ = int(state["n_features_in"])
        self.mean_ = arrays["mean"]
        self.components_ = arrays["components"]
        self.explained_variance_ = arrays["explained_variance"]
        self.explained_variance_ratio_ = arrays["explained_variance_ratio"]
