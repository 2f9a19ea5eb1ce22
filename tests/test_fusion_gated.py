"""The gated head: per-item gates over the encoders, learned with the contrastive objective."""
from __future__ import annotations

import numpy as np
import pytest

from mmembed.fusion import create_fusion, load_fusion

from test_fusion_trained import FAST, N_ITEMS, _gap, _planted

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def gated_fit():
    features, histories, _ = _planted()
    text_missing = np.arange(0, N_ITEMS, 7)  # every 7th item: an all-zero text block
    features["text"][text_missing] = 0.0
    head = create_fusion("gated", **FAST).fit(features, histories)
    return head, features, histories, text_missing


def test_items_without_text_lean_entirely_on_the_image(gated_fit):
    head, features, _, text_missing = gated_fit
    text, image = head.block_names_.index("text"), head.block_names_.index("image")
    assert head.gates_.shape == (N_ITEMS, 2)
    np.testing.assert_allclose(head.gates_.sum(axis=1), 1.0, rtol=1e-5)
    assert np.all(head.gates_[text_missing, text] == 0.0)
    assert np.all(head.gates_[text_missing, image] == 1.0)
    others = np.setdiff1d(np.arange(N_ITEMS), text_missing)
    assert np.all((head.gates_[others] > 0) & (head.gates_[others] < 1))  # both modalities used
    # an invalid block (mask False) counts as missing too
    valid = np.ones(N_ITEMS, dtype=bool)
    valid[:3] = False
    gates = head.item_gates({"text": (features["text"], valid), "image": features["image"]})
    assert np.all(gates[:3, text] == 0.0)


def test_co_occurring_items_end_closer_than_random_pairs(gated_fit):
    head, features, histories, _ = gated_fit
    vectors = head.transform(features)
    assert vectors.shape == (N_ITEMS, FAST["dim"]) and np.isfinite(vectors).all()
    assert _gap(vectors, histories) > 0.3
    assert _gap(vectors, histories) > _gap(np.concatenate([features["text"], features["image"]], 1), histories)


def test_save_and_load_keep_the_gates(gated_fit, tmp_path):
    head, features, _, _ = gated_fit
    head.save(tmp_path / "gated")
    loaded = load_fusion(tmp_path / "gated")
    np.testing.assert_array_equal(loaded.gates_, head.gates_)
    np.testing.assert_array_equal(loaded.transform(features), head.transform(features))
