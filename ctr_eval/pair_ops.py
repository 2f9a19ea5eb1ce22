"""The two per-position steps of the DIN's exact attention, as autograd functions that
keep no per-position tensor for backward.

The exact attention (:class:`ctr_eval.layers.DINAttention`) works on P (sample, position)
pairs, each naming a query row ``rows[i]`` and a key row ``key_rows[i]``. Written with
plain tensor ops, autograd keeps three (P, d) tensors for backward: the gathered keys, the
gathered queries and their product; at the real data's shape (batch 8192, 64 positions)
that is most of a step's memory. Every one of them is two gathers away from the small
(B, d) and (U, d) inputs, so these functions keep only the inputs and the index lists and
gather again in backward: the same function and gradients (to float rounding: sums run in
another order), about half the activation memory, and no more matmul work.

Both work through the P pairs in chunks of :data:`CHUNK_ROWS`, so their temporaries stay
a few tens of MB whatever the batch.
"""
from __future__ import annotations

from typing import Any

import torch

__all__ = ["pair_first_layer", "pair_weighted_sum", "CHUNK_ROWS"]

CHUNK_ROWS = 32768  # pairs per chunk: big enough that each matmul runs at full speed


def _chunks(n: int):
    for start in range(0, n, CHUNK_ROWS):
        yield slice(start, min(start + CHUNK_ROWS, n))


class _PairFirstLayer(torch.autograd.Function):
    """hidden[i] = k_part[key_rows[i]] + q_part[rows[i]] + (query[rows[i]] * keys[key_rows[i]]) @ w_p.T"""

    @staticmethod
    def forward(ctx: Any, query: torch.Tensor, keys: torch.Tensor, q_part: torch.Tensor,
                k_part: torch.Tensor, w_p: torch.Tensor, rows: torch.Tensor,
                key_rows: torch.Tensor) -> torch.Tensor:
        # the matmul runs in q_part's dtype: bfloat16 or float16 when it came from a Linear
        # under autocast (as the plain formulation's addmm would), else float32
        dtype = q_part.dtype
        weight = w_p.to(dtype)
        hidden = q_part.new_empty(rows.numel(), q_part.shape[1])
        for part in _chunks(rows.numel()):
            r, kr = rows[part], key_rows[part]
            product = (query.index_select(0, r) * keys.index_select(0, kr)).to(dtype)
            out = hidden[part]
            torch.addmm(k_part.index_select(0, kr).to(dtype), product, weight.t(), out=out)
            out.add_(q_part.index_select(0, r))
        ctx.save_for_backward(query, keys, w_p, rows, key_rows)
        ctx.shapes = (q_part.shape[0], k_part.shape[0])
        return hidden

    @staticmethod
    def backward(ctx: Any, grad_hidden: torch.Tensor):
        query, keys, w_p, rows, key_rows = ctx.saved_tensors
        n_queries, n_keys = ctx.shapes
        need_query, need_keys, need_q_part, need_k_part, need_w_p = ctx.needs_input_grad[:5]
        grad_hidden = grad_hidden.contiguous()
        width = grad_hidden.shape[1]
        grad_q_part = (grad_hidden.new_zeros(n_queries, width).index_add_(0, rows, grad_hidden)
                       if need_q_part else None)
        grad_k_part = (grad_hidden.new_zeros(n_keys, width).index_add_(0, key_rows, grad_hidden)
                       if need_k_part else None)
        grad_query = torch.zeros_like(query) if need_query else None
        grad_keys = torch.zeros_like(keys) if need_keys else None
        grad_w_p = torch.zeros_like(w_p) if need_w_p else None
        dtype = grad_hidden.dtype  # the forward's matmul dtype; gradients sum in the inputs' own
        weight = w_p.to(dtype)
        if need_query or need_keys or need_w_p:
            for part in _chunks(rows.numel()):
                r, kr, g = rows[part], key_rows[part], grad_hidden[part]
                q_rows, k_rows = query.index_select(0, r), keys.index_select(0, kr)
                if need_w_p:
                    if dtype == grad_w_p.dtype:
                        grad_w_p.addmm_(g.t(), q_rows * k_rows)
                    else:
                        grad_w_p.add_(g.t() @ (q_rows * k_rows).to(dtype))
                grad_product = (g @ weight).to(query.dtype)
                if need_query:
                    grad_query.index_add_(0, r, grad_product * k_rows)
                if need_keys:
                    grad_keys.index_add_(0, kr, grad_product.mul_(q_rows))
        return grad_query, grad_keys, grad_q_part, grad_k_part, grad_w_p, None, None


class _PairWeightedSum(torch.autograd.Function):
    """out[b] = sum over pairs i with rows[i] == b of scores[i] * keys[key_rows[i]]"""

    @staticmethod
    def forward(ctx: Any, scores: torch.Tensor, keys: torch.Tensor, rows: torch.Tensor,
                key_rows: torch.Tensor, batch: int) -> torch.Tensor:
        out = keys.new_zeros(batch, keys.shape[1])
        for part in _chunks(rows.numel()):
            out.index_add_(0, rows[part], scores[part].unsqueeze(1) * keys.index_select(0, key_rows[part]))
        ctx.save_for_backward(scores, keys, rows, key_rows)
        return out

    @staticmethod
    def backward(ctx: Any, grad_out: torch.Tensor):
        scores, keys, rows, key_rows = ctx.saved_tensors
        need_scores, need_keys = ctx.needs_input_grad[:2]
        grad_out = grad_out.contiguous()
        grad_scores = torch.empty_like(scores) if need_scores else None
        grad_keys = torch.zeros_like(keys) if need_keys else None
        for part in _chunks(rows.numel()):
            g_rows = grad_out.index_select(0, rows[part])
            if need_scores:
                k_rows = keys.index_select(0, key_rows[part])
                grad_scores[part] = (g_rows * k_rows).sum(dim=1)
            if need_keys:
                grad_keys.index_add_(0, key_rows[part], g_rows.mul_(scores[part].unsqueeze(1)))
        return grad_scores, grad_keys, None, None, None


def pair_first_layer(query: torch.Tensor, keys: torch.Tensor, q_part: torch.Tensor, k_part: torch.Tensor,
                     w_p: torch.Tensor, rows: torch.Tensor, key_rows: torch.Tensor) -> torch.Tensor:
    """(P, h) first attention layer over the pairs: the per-sample part ``q_part`` (B, h),
    the per-item part ``k_part`` (U, h), and the product term ``(query * key) @ w_p.T``
    (``query`` (B, d), ``keys`` (U, d), ``w_p`` (h, d))."""
    return _PairFirstLayer.apply(query, keys, q_part, k_part, w_p, rows, key_rows)


def pair_weighted_sum(scores: torch.Tensor, keys: torch.Tensor, rows: torch.Tensor,
                      key_rows: torch.Tensor, batch: int) -> torch.Tensor:
    """(batch, d): for each sample, its pairs' keys weighted by their ``scores`` (P,) and summed."""
    return _PairWeightedSum.apply(scores, keys, rows, key_rows, batch)
