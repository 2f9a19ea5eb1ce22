"""Fitted state is saved generically (mmembed/fusion/_state.py), and folders of the older
per-head layout still load.

tests/data/saved_heads_v1/ holds one folder per head saved by mmembed at commit 856de87
(the per-head layout, before ``state_format``), each with the transform it gave then
(``expected_transform.npy``) on test_fusion_contract's features.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from mmembed.fusion import load_fusion
from mmembed.fusion._state import STATE_FORMAT
from mmembed.fusion.base import FUSION_CONFIG_FILE, FusionHead
from test_fusion_contract import _features

V1 = Path(__file__).resolve().parent / "data" / "saved_heads_v1"


@pytest.mark.parametrize("folder", sorted(p.name for p in V1.iterdir()))
def test_heads_saved_in_the_old_layout_load_and_give_the_same_vectors(folder, tmp_path):
    assert "state_format" not in json.loads((V1 / folder / FUSION_CONFIG_FILE).read_text())
    head = load_fusion(V1 / folder)
    expected = np.load(V1 / folder / "expected_transform.npy")
    np.testing.assert_array_equal(head.transform(_features()), expected)
    head.save(tmp_path / "again")  # and once re-saved, in the generic layout
    config = json.loads((tmp_path / "again" / FUSION_CONFIG_FILE).read_text())
    assert config["state_format"] == STATE_FORMAT
    np.testing.assert_array_equal(load_fusion(tmp_path / "again").transform(_features()), expected)


class _Toy(FusionHead):
    """A head that is its maths only: no state listed anywhere."""

    name = "toy_state"

    def __init__(self, dim: int = 2):
        self._store_params(locals())

    def fit(self, features, sequences=None):
        x = np.asarray(features["a"], np.float32)
        self.mean_ = x.mean(axis=0)
        self.scale_ = np.float32(2.5)
        self.parts_ = [x[:2], None, {"n": 3, "w": np.arange(3, dtype=np.int16)}]
        self.names_ = {"a": 1.5}
        self.note_ = "fitted"
        self.net_ = torch.nn.Linear(x.shape[1], self.dim)
        return self

    def _new_network(self, name):
        assert name == "net_" and self.mean_ is not None  # plain attributes are back first
        return torch.nn.Linear(len(self.mean_), self.dim)

    def transform(self, features):
        self._check_fitted()
        with torch.no_grad():
            x = torch.as_tensor(np.asarray(features["a"], np.float32) - self.mean_) / float(self.scale_)
            return self.net_(x).numpy()


def test_every_fitted_attribute_round_trips_with_its_type(tmp_path):
    x = np.random.default_rng(0).normal(size=(5, 3)).astype(np.float32)
    head = _Toy().fit({"a": x})
    head.save(tmp_path)
    back = _Toy.load(tmp_path)
    np.testing.assert_array_equal(back.transform({"a": x}), head.transform({"a": x}))
    assert back.scale_ == np.float32(2.5) and back.scale_.dtype == np.float32
    np.testing.assert_array_equal(back.parts_[0], x[:2])
    assert back.parts_[1] is None and back.parts_[2]["n"] == 3
    assert back.parts_[2]["w"].dtype == np.int16 and back.names_ == {"a": 1.5} and back.note_ == "fitted"
    assert not back.net_.training


def test_an_attribute_that_cannot_be_saved_is_named(tmp_path):
    head = _Toy().fit({"a": np.ones((4, 3), np.float32)})
    head.odd_ = {1, 2}
    with pytest.raises(TypeError, match=r"_Toy\.odd_: cannot save a set"):
        head.save(tmp_path)
    head.odd_ = {3: "x"}
    with pytest.raises(TypeError, match=r"_Toy\.odd_: a saved dict needs str keys"):
        head.save(tmp_path)


def test_a_newer_state_format_is_refused(tmp_path):
    head = _Toy().fit({"a": np.ones((4, 3), np.float32)})
    head.save(tmp_path)
    config = json.loads((tmp_path / FUSION_CONFIG_FILE).read_text())
    config["state_format"] = STATE_FORMAT + 1
    (tmp_path / FUSION_CONFIG_FILE).write_text(json.dumps(config))
    with pytest.raises(ValueError, match="newer than this mmembed reads"):
        _Toy.load(tmp_path)


def test_a_saved_module_without_a_rebuild_hook_is_refused_by_name(tmp_path):
    class _NoHook(_Toy):
        name = "toy_no_hook"
        _new_network = FusionHead._new_network

    _NoHook().fit({"a": np.ones((4, 3), np.float32)}).save(tmp_path)
    with pytest.raises(NotImplementedError, match=r"_NoHook saved a torch module as 'net_': define _new_network"):
        _NoHook.load(tmp_path)
