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


def test_a_combination_of_two_tables_holds_what_each_holds():
    rng, latent, frequent = _truth()
    noise = 0.05
    content = latent[:, :4] @ rng.standard_normal((4, 70)) + noise * rng.standard_normal((len(latent), 70))
    collab = latent[:, 4:] @ rng.standard_normal((4, 70)) + noise * rng.standard_normal((len(latent), 70))
    table = fusion_probe.combined_table(["content", "collab"], [content, collab])
    assert table.shape == (len(latent), 128)
    assert not table[0].any()  # row 0 is padding, as in every Task 1 table
    r2 = fusion_probe.probe_table(table, latent, BLOCKS, frequent)
    # each part is L2-normalised first, which a linear probe does not fully undo
    assert r2["content"]["all"] > 0.8 and r2["collab"]["all"] > 0.8
    alone = fusion_probe.probe_table(content, latent, BLOCKS, frequent)
    assert abs(alone["collab"]["all"]) < 0.05


def test_behaviour_svd_places_co_clicked_items_together(tiny_root):
    from mmembed.api import history_rows
    from mmembed.datasets import ItemCatalog
    from mmembed.datasets.histories import load_train_histories

    table = fusion_probe.behaviour_svd.__wrapped__(tiny_root)
    catalog = ItemCatalog.from_dir(tiny_root, images=None)
    assert table.shape == (len(catalog.item_ids) + 1, fusion_probe.SVD_DIM)
    assert not table[0].any()
    np.testing.assert_array_equal(table, fusion_probe.behaviour_svd.__wrapped__(tiny_root))  # seeded

    rows = history_rows(load_train_histories(tiny_root).item_seq, catalog.item_ids)
    a, b = rows[:, :-1].ravel(), rows[:, 1:].ravel()
    keep = (a > 0) & (b > 0) & (a != b)
    unit = table / np.maximum(np.linalg.norm(table, axis=1, keepdims=True), 1e-12)
    adjacent = (unit[a[keep]] * unit[b[keep]]).sum(axis=1).mean()
    shuffled = np.random.default_rng(0).permutation(b[keep])
    unrelated = (unit[a[keep]] * unit[shuffled]).sum(axis=1).mean()
    assert adjacent > unrelated + 0.1
