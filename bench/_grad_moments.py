"""Shared by bench/_fuxictr_runner.py (FuxiCTR venv) and bench/din_dropout_moments.py:
gradient moments of a model over repeated draws. Imports numpy only."""
from __future__ import annotations

from typing import Any, Callable

import numpy as np


def gradient_moments(model: Any, draws: int, loss_of_draw: Callable[[], Any]):
    """``draws`` times: zero the gradients, ``loss_of_draw()`` (a fresh forward in training
    mode), backward. Returns (losses, {name: sum of gradients}, {name: sum of squares}) in
    float64; no optimizer step is taken."""
    params = dict(model.named_parameters())
    sums = {k: np.zeros(p.shape) for k, p in params.items()}
    squares = {k: np.zeros(p.shape) for k, p in params.items()}
    losses = []
    model.train()
    for _ in range(draws):
        model.zero_grad(set_to_none=True)
        loss = loss_of_draw()
        loss.backward()
        losses.append(float(loss.detach()))
        for k, p in params.items():
            g = p.grad.detach().double().cpu().numpy() if p.grad is not None else 0.0
            sums[k] += g
            squares[k] += np.square(g)
    return np.array(losses), sums, squares
