"""Building blocks shared by the CTR models, written to behave as FuxiCTR 2.3.x's do.

Where a block mirrors a FuxiCTR one, the docstring names it; the code is our own.
"""
from __future__ import annotations

import logging
from typing import Iterable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ctr_eval.global_batch import ReLUThenDropout
from ctr_eval.pair_ops import pair_first_layer, pair_weighted_sum

logger = logging.getLogger(__name__)

__all__ = [
    "MLPBlock",
    "ItemEmbedding",
    "code_rows",
    "DINAttention",
    "CrossNetV2",
    "fuxictr_reset_linear",
    "batch_unique",
    "norm_penalty",
    "ATTENTION_IMPLS",
]

ATTENTION_IMPLS = ("exact", "plain")  # "plain": FuxiCTR's formulation (tests, benchmarks)


class MLPBlock(nn.Module):
    """Linear -> [BatchNorm] -> ReLU -> [Dropout] per hidden layer, then an optional
    output Linear, as FuxiCTR's ``MLP_Block`` (dropout only when its rate is > 0; ReLU and
    dropout then run as one :class:`~ctr_eval.global_batch.ReLUThenDropout`, plain
    dropout on one process)."""

    def __init__(self, input_dim: int, hidden_units: Sequence[int], output_dim: int | None = None,
                 dropout: float = 0.0, batch_norm: bool = False) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        width = input_dim
        for units in hidden_units:
            layers.append(nn.Linear(width, units))
            if batch_norm:
                layers.append(nn.BatchNorm1d(units))
            # in place: the Linear/BatchNorm before it does not need its output for backward
            if dropout > 0:
                # the Identity keeps each layer's index (and so state-dict keys) as it was
                # when ReLU and dropout were two modules: older checkpoints still load
                layers += [nn.Identity(), ReLUThenDropout(dropout)]
            else:
                layers.append(nn.ReLU(inplace=True))
            width = units
        if output_dim is not None:
            layers.append(nn.Linear(width, output_dim))
            width = output_dim
        self.layers = nn.Sequential(*layers)
        self.output_dim = width

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


class ItemEmbedding(nn.Module):
    """Item id -> [id emb (d) | masked-mean tag emb (d) | Linear(emb_d128) (128)
    | Task 2 features: code emb (d) | likes emb (d) | views emb (d)].

    As FuxiCTR's ``FeatureEmbeddingDict`` builds the challenge's three item features:
    ``nn.Embedding(vocab, d, padding_idx=0)`` for item_id and item_tags (row 0 stays
    zero and gets no gradient), ``MaskedAveragePooling`` over the 5 tags (a position
    counts when its embedding row sums to non-zero; sum / (count + 1e-12), so an item
    with no tags gets zeros), and for the ``embedding``-type item_emb_d128 a
    ``nn.Linear(pretrain_dim, 128, bias=False)`` feature encoder (trainable).

    Task 2 item features, each only when its table is given: ``codes`` (N+1, L)
    semantic IDs (-1 = none) are embedded level by level (each level its own rows of one
    table) and summed, the usual way of embedding a semantic ID; ``levels`` (N+1, 2) the
    item's likes and views levels, each with its own table (level 0 = padding, as for the
    target's levels).

    The tables are non-persistent buffers gathered by index on the module's device;
    checkpoints hold parameters only.
    """

    def __init__(self, tags: torch.Tensor, emb: torch.Tensor, embedding_dim: int,
                 tag_vocab_size: int | None = None, codes: torch.Tensor | None = None,
                 levels: torch.Tensor | None = None, num_levels: int = 11) -> None:
        super().__init__()
        if tags.dim() != 2 or emb.dim() != 2 or tags.shape[0] != emb.shape[0]:
            raise ValueError(f"item tags {tuple(tags.shape)} and embeddings {tuple(emb.shape)} must "
                             "be (N+1, 5) and (N+1, D) tables with the same rows")
        num_rows = int(emb.shape[0])
        vocab = int(tags.max().item()) + 1 if tags.numel() else 1
        if tag_vocab_size is not None:
            if tag_vocab_size < vocab:
                raise ValueError(f"tag_vocab_size={tag_vocab_size} but the table holds tag id {vocab - 1}")
            vocab = tag_vocab_size
        self.register_buffer("item_tags", tags.to(torch.long), persistent=False)
        self.register_buffer("item_emb", emb.to(torch.float32), persistent=False)
        self.id_embedding = nn.Embedding(num_rows, embedding_dim, padding_idx=0)
        self.tag_embedding = nn.Embedding(max(vocab, 1), embedding_dim, padding_idx=0)
        self.emb_projection = nn.Linear(int(emb.shape[1]), int(emb.shape[1]), bias=False)
        self.output_dim = 2 * embedding_dim + int(emb.shape[1])
        self.code_embedding = self.likes_embedding = self.views_embedding = None
        if codes is not None:
            rows = code_rows(codes, num_rows)
            self.register_buffer("item_code_rows", rows, persistent=False)
            self.code_embedding = nn.Embedding(int(rows.max()) + 1, embedding_dim, padding_idx=0)
            self.output_dim += embedding_dim
        if levels is not None:
            if tuple(levels.shape) != (num_rows, 2) or int(levels.min()) < 0 or int(levels.max()) >= num_levels:
                raise ValueError(f"item levels must be ({num_rows}, 2) in 0..{num_levels - 1}, got "
                                 f"{tuple(levels.shape)}")
            self.register_buffer("item_levels", levels.to(torch.long), persistent=False)
            self.likes_embedding = nn.Embedding(num_levels, embedding_dim, padding_idx=0)
            self.views_embedding = nn.Embedding(num_levels, embedding_dim, padding_idx=0)
            self.output_dim += 2 * embedding_dim

    @property
    def num_rows(self) -> int:
        return int(self.item_emb.shape[0])

    def tables(self) -> list[nn.Embedding]:
        """Every embedding table, the challenge's two first."""
        return [t for t in (self.id_embedding, self.tag_embedding, self.code_embedding,
                            self.likes_embedding, self.views_embedding) if t is not None]

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        id_emb = self.id_embedding(ids)
        tag_emb = self.tag_embedding(self.item_tags[ids])  # (..., 5, d)
        counted = (tag_emb.sum(dim=-1) != 0).to(tag_emb.dtype).sum(dim=-1, keepdim=True)
        tag_mean = tag_emb.sum(dim=-2) / (counted + 1e-12)
        parts = [id_emb, tag_mean, self.emb_projection(self.item_emb[ids])]
        if self.code_embedding is not None:
            parts.append(self.code_embedding(self.item_code_rows[ids]).sum(dim=-2))
        if self.likes_embedding is not None:
            levels = self.item_levels[ids]
            parts += [self.likes_embedding(levels[..., 0]), self.views_embedding(levels[..., 1])]
        return torch.cat(parts, dim=-1)

    def reset_embeddings(self, std: float) -> None:
        """FuxiCTR's embedding init: normal(0, std) on every row but the padding row 0."""
        with torch.no_grad():
            for table in self.tables():
                nn.init.normal_(table.weight[1:], std=std)
                table.weight[0].zero_()


def code_rows(codes: torch.Tensor, num_rows: int) -> torch.Tensor:
    """(N+1, L) semantic-ID codes (-1 = none) as rows of one embedding table: level l's
    code c is row 1 + offset_l + c, where level l's rows follow level l-1's (each level
    as wide as its largest code + 1); no code is row 0, the padding row."""
    if codes.dim() != 2 or codes.shape[0] != num_rows:
        raise ValueError(f"item codes must be ({num_rows}, L), got {tuple(codes.shape)}")
    codes = codes.to(torch.long)
    widths = codes.max(dim=0).values.clamp(min=0) + 1
    offsets = torch.cumsum(widths, 0) - widths
    return torch.where(codes >= 0, codes + offsets + 1, torch.zeros_like(codes))


class DINAttention(nn.Module):
    """DIN target attention, FuxiCTR's ``DIN_Attention`` with ReLU and no softmax.

    Plain form (FuxiCTR): score = MLP([q, k, q-k, q*k]) per history position, times
    the 0/1 mask; output = sum over positions of score * k.

    Exact form (default): the first layer W = [Wq | Wk | Wd | Wp] of the MLP gives
    W [q, k, q-k, q*k] + b = (Wq + Wd) q + (Wk - Wd) k + Wp (q*k) + b, so the q-part
    is computed once per sample, the k-part once per distinct item in ``keys``, and only
    the product term per position; padded positions are never computed (their score
    is multiplied by 0 in the plain form anyway; the MLP has no batch norm, so skipping
    rows changes nothing else). Dropout still acts per (sample, position) row after each
    hidden layer, the same distribution as the plain form.
    """

    def __init__(self, dim: int, hidden_units: Sequence[int], dropout: float = 0.0,
                 use_softmax: bool = False) -> None:
        super().__init__()
        if not hidden_units:
            raise ValueError("DINAttention needs at least one hidden layer")
        self.dim = dim
        self.use_softmax = use_softmax
        self.mlp = MLPBlock(4 * dim, hidden_units, output_dim=1, dropout=dropout)

    @property
    def first_layer(self) -> nn.Linear:
        return self.mlp.layers[0]

    def forward(self, query: torch.Tensor, keys: torch.Tensor, key_index: torch.Tensor,
                mask: torch.Tensor, impl: str = "exact") -> torch.Tensor:
        """query (B, d); keys (U, d) item table; key_index (B, L) rows of ``keys``;
        mask (B, L) bool, True at real history items. Returns (B, d)."""
        if impl == "exact":
            return self._forward_exact(query, keys, key_index, mask)
        if impl == "plain":
            history = keys.index_select(0, key_index.reshape(-1)).reshape(*key_index.shape, -1)
            return self._forward_plain(query, history, mask)
        raise ValueError(f"unknown attention impl {impl!r}; valid: {ATTENTION_IMPLS}")

    def _forward_exact(self, query: torch.Tensor, keys: torch.Tensor, key_index: torch.Tensor,
                       mask: torch.Tensor) -> torch.Tensor:
        batch, length = key_index.shape
        d = self.dim
        first = self.first_layer
        w_q, w_k, w_d, w_p = first.weight.split(d, dim=1)
        q_part = F.linear(query, w_q + w_d, first.bias)  # once per sample
        k_part = F.linear(keys, w_k - w_d)  # once per distinct item
        # Only real (sample, position) pairs, packed into one list. (A (B, L) layout that
        # broadcasts the per-sample terms instead of gathering them measured no faster
        # even with no padding at all, so there is one layout.)
        rows, cols = mask.nonzero(as_tuple=True)
        key_rows = key_index[rows, cols]
        # the per-position steps keep no (pairs, d) tensor for backward (ctr_eval.pair_ops)
        hidden = pair_first_layer(query, keys, q_part, k_part, w_p, rows, key_rows)
        scores = self.mlp.layers[1:](hidden).squeeze(-1)
        if self.use_softmax:
            dense = scores.new_full((batch, length), -1e9).index_put((rows, cols), scores)
            scores = dense.softmax(dim=-1)[rows, cols]
        return pair_weighted_sum(scores, keys, rows, key_rows, batch)

    def _forward_plain(self, query: torch.Tensor, history: torch.Tensor,
                       mask: torch.Tensor) -> torch.Tensor:
        """FuxiCTR's formulation, kept as the reference for tests and benchmarks."""
        batch, length, d = history.shape
        q = query.unsqueeze(1).expand(-1, length, -1)
        attention_input = torch.cat([q, history, q - history, q * history], dim=-1)
        weights = self.mlp(attention_input.reshape(-1, 4 * d)).reshape(batch, length)
        weights = weights * mask.to(weights.dtype)
        if self.use_softmax:
            weights = weights + -1e9 * (1 - mask.to(weights.dtype))
            weights = weights.softmax(dim=-1)
        return (weights.unsqueeze(-1) * history).sum(dim=1)


class CrossNetV2(nn.Module):
    """DCNv2 cross layers, as FuxiCTR's ``CrossNetV2``: x <- x + x0 * (W x + b)."""

    def __init__(self, input_dim: int, num_layers: int) -> None:
        super().__init__()
        self.cross_layers = nn.ModuleList(nn.Linear(input_dim, input_dim) for _ in range(num_layers))

    def forward(self, x0: torch.Tensor) -> torch.Tensor:
        x = x0
        for layer in self.cross_layers:
            x = x + x0 * layer(x)
        return x


def batch_unique(ids: torch.Tensor, num_rows: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(sorted distinct values of ``ids``, position of each id among them), for ids in
    [0, num_rows): the result of ``torch.unique(ids, return_inverse=True)`` without a
    sort, in O(len(ids) + num_rows)."""
    present = torch.zeros(num_rows, dtype=torch.bool, device=ids.device)
    present[ids] = True
    unique_ids = present.nonzero().squeeze(1)
    slot = torch.cumsum(present, dim=0) - 1
    return unique_ids, slot[ids]


def fuxictr_reset_linear(module: nn.Module) -> None:
    """FuxiCTR ``BaseModel.reset_parameters``' default: xavier_normal_ weights and zero
    bias on every module whose type is exactly nn.Linear (subclasses such as
    MultiheadAttention's out_proj keep PyTorch's own init, as in FuxiCTR)."""
    for m in module.modules():
        if type(m) is nn.Linear:
            nn.init.xavier_normal_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)


def norm_penalty(params: Iterable[torch.Tensor], pairs: Sequence[tuple[int, float]]) -> torch.Tensor | None:
    """sum over params and (p, lambda) of (lambda / p) * ||param||_p^p, as FuxiCTR's
    ``BaseModel.regularization_loss`` (whole tensors, not just the rows in the batch)."""
    total = None
    params = [p for p in params if p.requires_grad]
    for p_norm, lam in pairs:
        for param in params:
            term = param.abs().sum() if p_norm == 1 else param.pow(2).sum()
            term = term * (lam / p_norm)
            total = term if total is None else total + term
    return total
