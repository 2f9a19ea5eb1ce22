"""bench/fusion_probe.py: the ridge probe of a table against latent blocks."""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
fusion_probe = pytest.importorskip("fusion_probe")

BLOCKS = {"content": (0, 4), "collab": (4, 8)}


def _truth(n=1500, seed=0):
    rng = np.random.default_rng(seed)
    latent = rng.standard_normal((n + 1, 8))
    latent[0] = 0
    frequent = rng.random(n) < 0.5
    return rng, latent, frequent


def test_a_projection_of_the_truth_is_recovered_and_a_missing_block_is_not():
    rng, latent, frequent = _truth()
    projection = rng.standard_normal((8, 16))
    full = fusion_probe.probe_table(latent @ projection, latent, BLOCKS, frequent)
    assert set(full) == set(BLOCKS) and set(full["collab"]) == {"all", "frequent", "rare"}
    assert all(v > 0.99 for block in full.values() for v in block.values())

    content_only = latent.copy()
    content_only[:, 4:] = 0
    part = fusion_probe.probe_table(content_only @ projection, latent, BLOCKS, frequent)
    assert part["content"]["all"] > 0.99
    assert abs(part["collab"]["all"]) < 0.05  # nothing of it in the table


def test_a_block_known_only_for_frequent_items_shows_in_the_split():
    rng, latent, frequent = _truth()
    table = latent.copy()
    table[1:][~frequent, 4:] = 0  # collab only where behaviour would have shown it
    r2 = fusion_probe.probe_table(table, latent, BLOCKS, frequent)["collab"]
    assert r2["frequent"] > 0.6
    assert abs(r2["rare"]) < 0.2
    assert r2["rare"] < r2["all"] < r2["frequent"]
