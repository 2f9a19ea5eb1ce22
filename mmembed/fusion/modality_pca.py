"""``modality_pca``: a PCA per encoder block, then the blocks' scores side by side.

Joint concatenate-then-PCA lets the encoder with the most (or the most correlated)
variance take most of the output width; fitting one PCA per modality and concatenating
the scores guarantees every modality its own slice. A team of the WWW 2025 MM-CTR
challenge reported this per-modality order to work better than the joint one.

What happens, in order, for each block: the preparation shared with ``concat_pca``
(L2 row normalisation, invalid rows filled with the block's mean valid row,
standardisation; see ``mmembed/fusion/_pca.py``), an exact deterministic PCA fitted on
that block's own valid rows, and the block's first ``block_widths_[name]`` scores,
optionally whitened and weighted. The slices are concatenated in the order of the
features at fit time; ``normalize_output`` then L2-normalises the whole row. An item
missing a modality sits at that block's mean, so its slice is zero.
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
    check_names,
    chunks,
    exact_pca,
    prepared_rows,
    unit_rows,
    variance_ratio,
    whitening_divisor,
)
from mmembed.fusion.base import FeatureBlock

logger = logging.getLogger(__name__)

SPLIT_RULES = ("variance", "equal")


def split_by_variance(ratios: list[np.ndarray], dim: int) -> list[int]:
    """Widths summing to ``dim``: every block gets 1, then each further slot goes to the
    block whose next unused component explains the largest share of *that block's* total
    variance (ties: the earlier block). ``ratios[b]`` lists block b's explained-variance
    ratios in decreasing order, as many as it may use at most."""
    widths = [1] * len(ratios)
    candidates = sorted(
        (-float(r[k]), b, k) for b, r in enumerate(ratios) for k in range(1, len(r))
    )
    for _, b, _ in candidates[: dim - len(ratios)]:
        widths[b] += 1
    return widths


def split_equally(dim: int, count: int) -> list[int]:
    """``dim // count`` each; the first ``dim % count`` blocks get one more."""
    return [dim // count + (1 if b < dim % count else 0) for b in range(count)]


@register_fusion("modality_pca")
class ModalityPCA(BlockPCAHead):
    """PCA per encoder block, then concatenation of the blocks' scores to ``dim``.

    Options (each block's statistics come from its own valid rows):

    - ``dim``: output width, the sum of the block widths (``block_widths_`` once fitted).
    - ``split`` (default "variance"): how ``dim`` is shared out.
      ``"variance"``: each block first gets 1 dim, then every further dim goes to the block
      whose next unused component explains the largest share of that block's own total
      variance (scale-free, so no encoder wins by its scale or width; ties go to the
      earlier encoder). ``"equal"``: dim // n_blocks each, the first dim % n_blocks
      encoders one more. A mapping {encoder name: width}: those widths, which must name
      every encoder, be positive and sum to dim. A block never gets more than its width
      or its number of valid items.
    - ``normalize`` (default True): divide each block's rows by their L2 norm before its PCA.
    - ``standardize`` (default None): ``"column"`` z-scores every feature column before the
      block's PCA (a correlation PCA); ``"block"`` divides the centred block by sqrt(its
      total variance), which scales its scores so that the whole block carries variance 1.
    - ``whiten`` (default False): divide each block's component k by sqrt(its explained
      variance), as scikit-learn's PCA(whiten=True); unit variance on the fit rows.
    - ``weights`` (default None): {encoder name: number > 0} multiplying that block's
      output slice, after whitening (so weights still count when whitening); unnamed
      encoders weigh 1; an unknown name is an error.
    - ``normalize_output`` (default False): divide each output row by its L2 norm, last.
    """

    tiny_params = {"dim": 4}

    def __init__(
        self,
        dim: int = 128,
        split: str | Mapping[str, int] = "variance",
        normalize: bool = True,
        standardize: str | None = None,
        weights: Mapping[str, float] | None = None,
        whiten: bool = False,
        normalize_output: bool = False,
    ) -> None:
        self._store_params(locals())

    # -- parameters --------------------------------------------------------------------
    def _check_params(self) -> None:
        check_positive_int("modality_pca: dim", self.dim)
        self._check_split()
        self._check_common_params()

    def _check_split(self) -> None:
        split = self.split
        if isinstance(split, str):
            if split not in SPLIT_RULES:
                raise ValueError(f"modality_pca: split must be 'variance', 'equal' or a mapping "
                                 f"{{encoder name: width}}, got {split!r}")
            return
        if not isinstance(split, Mapping):
            raise TypeError(f"modality_pca: split must be 'variance', 'equal' or a mapping "
                            f"{{encoder name: width}}, got {type(split).__name__} {split!r}")
        for name, width in split.items():
            if not isinstance(name, str):
                raise TypeError(f"modality_pca: split keys must be encoder names (str), got {name!r}")
            check_positive_int(f"modality_pca: split[{name!r}]", width)
        if sum(split.values()) != self.dim:
            raise ValueError(f"modality_pca: the widths in split {dict(split)} sum to "
                             f"{sum(split.values())}, but dim={self.dim}")

    def check_input_widths(self, widths: Mapping[str, int]) -> None:
        self._check_params()
        names = list(widths)
        check_names("modality_pca", "weights", self.weights or {}, names)
        if isinstance(self.split, Mapping):
            check_names("modality_pca", "split", self.split, names)
            missing = [n for n in names if n not in self.split]
            if missing:
                raise ValueError(f"modality_pca: split gives no width for encoder(s) {missing}; "
                                 f"name every encoder of {names}")
        elif self.dim < len(names):
            raise ValueError(f"modality_pca: dim={self.dim} is less than the number of encoders "
                             f"({len(names)}: {names}); every block needs at least 1 dim")
        self._check_caps(dict(widths), "dims")

    def _check_caps(self, caps: dict[str, int], what: str) -> None:
        """Refuse a split that gives a block more than ``caps`` allows."""
        total = sum(caps.values())
        if self.dim > total:
            raise ValueError(f"modality_pca: dim={self.dim} exceeds what the blocks can give "
                             f"({total}; {what} per encoder: {caps}); choose dim <= {total}")
        if self.split == "variance":
            return
        wanted = self._fixed_widths(list(caps))
        over = {n: w for n, w in wanted.items() if w > caps[n]}
        if over:
            raise ValueError(f"modality_pca: split={self.split!r} asks {over}, more than these "
                             f"encoders give ({what}: { {n: caps[n] for n in over} }); "
                             "pass split='variance' or a mapping that fits")

    def _fixed_widths(self, names: list[str]) -> dict[str, int]:
        if isinstance(self.split, Mapping):
            return {n: int(self.split[n]) for n in names}
        return dict(zip(names, split_equally(self.dim, len(names))))

    # -- fit ---------------------------------------------------------------------------
    def fit(self, features: Mapping[str, Any], sequences: Any = None) -> ModalityPCA:
        blocks = self._valid_blocks(features)
        caps = {b.name: min(b.vectors.shape[1], int(b.valid.sum())) for b in blocks}
        self._check_caps(caps, "min(dims, valid items)")
        preps = self._fit_preparation(blocks)
        if self.split == "variance":
            wanted = {n: min(cap, self.dim - len(blocks) + 1) for n, cap in caps.items()}
        else:
            wanted = self._fixed_widths(list(caps))
        fits = [exact_pca(lambda rows, b=b, p=p: prepared_rows(b, rows, self.normalize, p),
                          b.valid, wanted[b.name])
                for b, p in zip(blocks, preps)]
        ratios = [variance_ratio(variance, total) for _, _, variance, total in fits]
        if self.split == "variance":
            widths = split_by_variance(ratios, self.dim)
        else:
            widths = [wanted[b.name] for b in blocks]
        self._store_preparation(blocks, preps)
        self.block_widths_ = dict(zip(self.block_names_, widths))
        self.means_ = [mean for mean, _, _, _ in fits]
        self.components_ = [c[:w] for (_, c, _, _), w in zip(fits, widths)]
        self.explained_variance_ = [v[:w] for (_, _, v, _), w in zip(fits, widths)]
        self.explained_variance_ratio_ = [r[:w] for r, w in zip(ratios, widths)]
        self.n_fit_items_ = {b.name: int(b.valid.sum()) for b in blocks}
        self._log_fit(blocks)
        return self

    def _log_fit(self, blocks: list[FeatureBlock]) -> None:
        kept = ", ".join(f"{n}: {self.block_dims_[i]} -> {self.block_widths_[n]} "
                         f"({100 * float(self.explained_variance_ratio_[i].sum()):.1f}% of its variance)"
                         for i, n in enumerate(self.block_names_))
        filled = {k: v for k, v in self.n_filled_.items() if v}
        logger.info("modality_pca: split=%r, %s%s", self.split, kept,
                    f"; invalid rows filled with the block mean: {filled}" if filled else "")

    # -- transform ---------------------------------------------------------------------
    def transform(self, features: Mapping[str, Any]) -> np.ndarray:
        blocks = self._fitted_blocks(features)
        preps = self._preparation()
        divisors = [whitening_divisor(v) if self.whiten else None for v in self.explained_variance_]
        n_items = len(blocks[0].vectors)
        out = np.empty((n_items, self.dim), dtype=np.float32)
        for rows in chunks(n_items):
            parts = []
            for i, block in enumerate(blocks):
                x = prepared_rows(block, rows, self.normalize, preps[i])
                y = (x - self.means_[i]) @ self.components_[i].T
                if divisors[i] is not None:
                    y /= divisors[i]
                parts.append(y * self.block_weights_[i] if self.block_weights_[i] != 1.0 else y)
            y = np.concatenate(parts, axis=1)
            out[rows] = unit_rows(y) if self.normalize_output else y
        return out

    # -- persistence ---------------------------------------------------------------------
    def _load_state_v1(self, state: dict[str, Any], arrays: Mapping[str, np.ndarray]) -> None:
        """A folder saved before 5 Dec 2026 (per-head layout)."""
        self._set_preparation_state(state, arrays)
        names = self.block_names_
        self.block_widths_ = {n: int(w) for n, w in zip(names, state["block_widths"])}
        self.n_fit_items_ = {n: int(c) for n, c in zip(names, state["n_fit_items"])}
        self.means_ = [arrays[f"mean_{i}"] for i in range(len(names))]
        self.components_ = [arrays[f"components_{i}"] for i in range(len(names))]
        self.explained_variance_ = [arrays[f"explained_variance_{i}"] for i in range(len(names))]
        self.explained_variance_ratio_ = [arrays[f"explained_variance_ratio_{i}"] for i in range(len(names))]
