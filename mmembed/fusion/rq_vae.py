"""``rq_vae``: residual-quantized semantic IDs learned by an autoencoder (RQ-VAE).

The encoders' features go through ``concat_pca`` (same options) to ``dim``; an MLP
encoder maps them to a ``latent_dim`` vector z; ``levels`` codebooks of ``codes`` vectors
quantize z residually (level l picks the code nearest to what levels before left over);
an MLP decoder maps the quantized latent back to the ``dim``-wide input. Training (Adam,
``steps`` minibatches of ``batch_size`` items, in passes over the items) minimises the reconstruction error plus, per level, the codebook
loss ||sg(r) - e||^2 and ``beta`` times the commitment loss ||r - sg(e)||^2, with the
quantized latent passed to the decoder by the straight-through estimator (the TIGER
recipe: beta 0.25, codebooks initialised by k-means on the first encoder outputs). After
every pass over the items a code no item chose is reset to the residual of a random item at that level
(dead-code reset).

Outputs, as for ``rq``: ``transform`` gives the decoder's reconstruction of each item's
quantized latent (``dim`` wide, a valid Task 1 table); ``codes_`` holds the fitted items'
(items, levels) codes (``unique_ids`` resolves collisions as in ``rq``); ``diagnostics()``
the codebook use, collision rate and relative reconstruction error. The fit runs on one CPU process
(deterministic for a seed); it is small (an MLP over the item table).
"""
from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from torch import nn

from ctr_eval.checks import check_positive_int
from mmembed.fusion import register_fusion
from mmembed.fusion.concat_pca import ConcatPCA
from mmembed.fusion.rq import (code_statistics, kmeans, quantization_levels, quantizer_diagnostics,
                               with_unique_level)

logger = logging.getLogger(__name__)


class _RQVAENet(nn.Module):
    def __init__(self, dim: int, hidden: int, latent_dim: int, levels: int, codes: int) -> None:
        super().__init__()
        self.encoder = nn.Sequential(nn.Linear(dim, hidden), nn.ReLU(), nn.Linear(hidden, latent_dim))
        self.decoder = nn.Sequential(nn.Linear(latent_dim, hidden), nn.ReLU(), nn.Linear(hidden, dim))
        self.codebooks = nn.Parameter(torch.zeros(levels, codes, latent_dim))

    def quantize(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(quantized latent, (n, levels) codes, per-level codebook + commitment terms
        summed as (codebook, commitment))."""
        residual, quantized = z, torch.zeros_like(z)
        codes, codebook_loss, commitment = [], z.new_zeros(()), z.new_zeros(())
        for book in self.codebooks:
            chosen = torch.cdist(residual.detach(), book.detach()).argmin(dim=1)
            entry = book.index_select(0, chosen)
            codebook_loss = codebook_loss + ((residual.detach() - entry) ** 2).sum(dim=1).mean()
            commitment = commitment + ((residual - entry.detach()) ** 2).sum(dim=1).mean()
            quantized = quantized + entry
            residual = residual - entry.detach()
            codes.append(chosen)
        return quantized, torch.stack(codes, dim=1), torch.stack([codebook_loss, commitment])


@register_fusion("rq_vae")
class RQVAE(ConcatPCA):
    """RQ-VAE semantic IDs over ``concat_pca`` vectors; outputs the decoded reconstruction."""

    tiny_params = {"dim": 4, "levels": 2, "codes": 4, "latent_dim": 3, "hidden": 8, "steps": 10, "batch_size": 16}
    makes_codes = True

    def __init__(
        self,
        dim: int = 128,
        levels: int = 3,
        codes: int = 256,
        latent_dim: int = 32,
        hidden: int = 256,
        beta: float = 0.25,
        steps: int = 3000,
        batch_size: int = 1024,
        learning_rate: float = 1e-3,
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
        for name in ("levels", "codes", "latent_dim", "hidden", "steps", "batch_size"):
            check_positive_int(f"rq_vae: {name}", getattr(self, name))
        for name in ("beta", "learning_rate"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
                raise ValueError(f"rq_vae: {name} must be a number > 0, got {value!r}")
        if not isinstance(self.unique_ids, bool):
            raise TypeError(f"rq_vae: unique_ids must be True or False, got {self.unique_ids!r}")

    def fit(self, features: Mapping[str, Any], sequences: Any = None) -> RQVAE:
        super().fit(features)
        x = torch.from_numpy(np.ascontiguousarray(super().transform(features), dtype=np.float32))
        if self.codes > len(x):
            raise ValueError(f"rq_vae: codes={self.codes} exceeds the {len(x)} items; choose codes <= {len(x)}")
        generator = torch.Generator().manual_seed(self.seed)
        torch.manual_seed(self.seed)  # the layers' initialisation
        self.net_ = _RQVAENet(x.shape[1], self.hidden, self.latent_dim, self.levels, self.codes)
        self._init_codebooks(x)
        optimizer = torch.optim.Adam(self.net_.parameters(), lr=self.learning_rate)
        history, step = [], 0
        while step < self.steps:  # passes over the items, the last one cut at ``steps``
            order = torch.randperm(len(x), generator=generator)
            used = torch.zeros(self.levels, self.codes, dtype=torch.bool)
            total, seen = 0.0, 0
            for start in range(0, len(x), self.batch_size):
                if step == self.steps:
                    break
                batch = x[order[start: start + self.batch_size]]
                loss, codes = self._loss(batch)
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                step += 1
                used[torch.arange(self.levels).unsqueeze(0), codes] = True
                total, seen = total + loss.item() * len(batch), seen + len(batch)
            history.append(total / seen)
            if step < self.steps:
                self._reset_dead_codes(x, used, generator)
        self.history_ = history
        quantized = self._quantize(x)
        self.codebook_usage_, self.collision_rate_ = code_statistics(quantized, self.codes)
        self.codes_ = with_unique_level(quantized) if self.unique_ids else quantized
        reconstructed = self.reconstruct(quantized)
        xs = x.numpy()
        self.reconstruction_error_ = float(((reconstructed - xs) ** 2).sum(axis=1).mean()
                                           / max(float((xs ** 2).sum(axis=1).mean()), 1e-12))
        logger.info("rq_vae: %d levels x %d codes, %d steps (loss per pass %.4f -> %.4f); codebook use %s; "
                    "collisions %.1f%% of items; relative reconstruction error %.3f", self.levels, self.codes,
                    self.steps, history[0], history[-1], ", ".join(f"{u:.0%}" for u in self.codebook_usage_),
                    100 * self.collision_rate_, self.reconstruction_error_)
        return self

    def _loss(self, batch: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        z = self.net_.encoder(batch)
        quantized, codes, (codebook_loss, commitment) = self.net_.quantize(z)
        decoded = self.net_.decoder(z + (quantized - z).detach())  # straight-through
        reconstruction = ((decoded - batch) ** 2).sum(dim=1).mean()
        return reconstruction + codebook_loss + self.beta * commitment, codes

    def _init_codebooks(self, x: torch.Tensor) -> None:
        """k-means per level on the initial encoder outputs' residuals."""
        with torch.no_grad():
            residual = self.net_.encoder(x).double().numpy()
        for level in range(self.levels):
            centres, assigned = kmeans(residual, self.codes, seed=self.seed * 1000 + level, balanced=False)
            self.net_.codebooks.data[level] = torch.from_numpy(centres.astype(np.float32))
            residual = residual - centres[assigned]

    def _reset_dead_codes(self, x: torch.Tensor, used: torch.Tensor, generator: torch.Generator) -> None:
        if bool(used.all()):
            return
        with torch.no_grad():
            residual = self.net_.encoder(x)
            for level, book in enumerate(self.net_.codebooks):
                dead = torch.nonzero(~used[level]).flatten()
                if len(dead):
                    pick = torch.randint(0, len(x), (len(dead),), generator=generator)
                    book[dead] = residual[pick]
                chosen = torch.cdist(residual, book).argmin(dim=1)
                residual = residual - book.index_select(0, chosen)

    def transform(self, features: Mapping[str, Any]) -> np.ndarray:
        """The decoder's reconstruction of each item's quantized latent, float32 (items, dim)."""
        return self.reconstruct(self.encode(features))

    def encode(self, features: Mapping[str, Any]) -> np.ndarray:
        """(items, levels) codes of the items' encoder outputs (with ``unique_ids``, one
        more level numbering the given items that share a code)."""
        self._check_fitted()
        codes = self._quantize(torch.from_numpy(np.ascontiguousarray(super().transform(features), dtype=np.float32)))
        return with_unique_level(codes) if self.unique_ids else codes

    def _quantize(self, x: torch.Tensor) -> np.ndarray:
        with torch.no_grad():
            _, codes, _ = self.net_.quantize(self.net_.encoder(x))
        return codes.numpy().astype(np.int32)

    def reconstruct(self, codes: np.ndarray) -> np.ndarray:
        """The decoder's output for (rows, levels) codes, float32 (rows, dim)."""
        self._check_fitted()
        codes = quantization_levels(self, codes)
        index = torch.from_numpy(codes.astype(np.int64))
        with torch.no_grad():
            books = self.net_.codebooks
            latent = sum(books[level].index_select(0, index[:, level]) for level in range(self.levels))
            return self.net_.decoder(latent).numpy().astype(np.float32)

    def diagnostics(self) -> dict[str, Any]:
        return {**quantizer_diagnostics(self), "kind": "rq_vae", "final_loss": self.history_[-1]}

    def _new_network(self, name: str) -> Any:
        return _RQVAENet(self.dim, self.hidden, self.latent_dim, self.levels, self.codes)
