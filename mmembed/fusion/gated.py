"""``gated``: a projection per encoder, mixed per item by a gate computed from the item's
own features, trained with the contrastive head's objective.

For item i with encoder blocks x_1..x_K (each normalised as :mod:`.contrastive` does):

    p_k = normalize(MLP_k(x_k))                       one projection per encoder, to ``dim``
    g   = softmax(W [x_1 | ... | x_K] + b)            the item's gate over the K encoders
    v_i = normalize(sum_k g_k p_k (+ shrunk residual_i))

A block the item lacks (an encoder marked it invalid, or its features are all zeros) gets
no gate weight: its logit is masked before the softmax, so such an item leans entirely on
the encoders it has. ``gates_`` holds each fitted item's gate (items x encoders), and the
mean gate per encoder is logged after fitting: which modality the items lean on.

Everything else (the history pairs, InfoNCE with the log-q correction, the optional
per-item residual, early stopping, Accelerate, save/load) is the contrastive head's.
"""
from __future__ import annotations

import logging
from typing import Any, Mapping

import numpy as np
import torch
from torch import nn

from mmembed.fusion import register_fusion
from mmembed.fusion.base import FeatureBlock
from mmembed.fusion.contrastive import ContrastiveFusion, ResidualNet, ShrunkResidual

logger = logging.getLogger(__name__)


class GatedNet(ResidualNet):
    """Per-encoder projections mixed by a per-item softmax gate (+ shrunk residual)."""

    def __init__(self, in_dims: list[int], hidden: int, dim: int, shrink: np.ndarray | None) -> None:
        super().__init__()
        self.projections = nn.ModuleList(
            nn.Sequential(nn.Linear(width, hidden), nn.GELU(), nn.Linear(hidden, dim)) for width in in_dims)
        self.gate = nn.Linear(sum(in_dims), len(in_dims))
        self.residual = None if shrink is None else ShrunkResidual(shrink, dim)

    def gates(self, blocks: list[torch.Tensor]) -> torch.Tensor:
        """(rows, K) mixing weights; a block that is all zeros for a row gets weight 0
        (uniform weights when a row has no block at all)."""
        logits = self.gate(torch.cat(blocks, dim=1))
        present = torch.stack([b.abs().sum(dim=1) > 0 for b in blocks], dim=1)
        present = present | ~present.any(dim=1, keepdim=True)
        return torch.softmax(logits.masked_fill(~present, float("-inf")), dim=1)

    def content(self, blocks: list[torch.Tensor]) -> torch.Tensor:
        projected = torch.stack([nn.functional.normalize(proj(b), dim=1)
                                 for proj, b in zip(self.projections, blocks)], dim=1)  # (B, K, dim)
        return (self.gates(blocks).unsqueeze(-1) * projected).sum(dim=1)


@register_fusion("gated")
class GatedFusion(ContrastiveFusion):
    """A projection per encoder mixed by a per-item gate from the item's own features,
    trained like ``contrastive`` on co-occurrence in train histories."""

    tiny_params = {"dim": 4, "hidden": 8, "max_steps": 40, "batch_size": 64}
    net_class = GatedNet

    def _inputs(self, blocks: list[FeatureBlock]) -> list[np.ndarray]:
        # an all-zero feature row is no input either: it must get no gate weight
        out = super()._inputs(blocks)
        for x, b in zip(out, blocks):
            x[~np.any(b.vectors != 0, axis=1)] = 0.0
        return out

    def fit(self, features: Mapping[str, Any], sequences: Any = None) -> "GatedFusion":
        super().fit(features, sequences)
        self.gates_ = self.item_gates(features)
        means = ", ".join(f"{name} {share:.2f}" for name, share in zip(self.block_names_, self.gates_.mean(axis=0)))
        logger.info("gated: mean gate per encoder: %s", means)
        return self

    def item_gates(self, features: Mapping[str, Any]) -> np.ndarray:
        """(items, encoders) gate of each item, columns in ``block_names_`` order."""
        self._check_fitted()
        from mmembed.fusion.base import as_blocks

        inputs = self._inputs(self._fitted_order(as_blocks(features)))
        with torch.no_grad():
            return self.net_.gates([torch.as_tensor(x) for x in inputs]).numpy()

    def _load_state_v1(self, state: dict[str, Any], arrays: Mapping[str, np.ndarray]) -> None:
        super()._load_state_v1(state, arrays)
        self.gates_ = arrays["gates"]
