"""The fusion-head contract, checked for every registered head with its ``tiny_params``.

A new head needs no change here: register it and set ``tiny_params`` on the class
(test_every_head_declares_tiny_params says so when it is missing).
"""
from __future__ import annotations

import numpy as np
import pytest
from sklearn.exceptions import NotFittedError

from mmembed.fusion import FUSIONS, FusionHead, create_fusion, list_fusions, load_fusion

N_ITEMS = 60


def _features(seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    factors = rng.normal(size=(N_ITEMS, 3))
    text = factors @ rng.normal(size=(3, 12)) + 0.1 * rng.normal(size=(N_ITEMS, 12))
    image = factors @ rng.normal(size=(3, 8)) + 0.1 * rng.normal(size=(N_ITEMS, 8))
    image_valid = np.ones(N_ITEMS, dtype=bool)
    image_valid[[3, 17]] = False  # two items without a cover
    image[~image_valid] = 0.0
    return {"text": text.astype(np.float32), "image": (image.astype(np.float32), image_valid)}


def _sequences(seed: int = 0) -> np.ndarray:
    """Left zero-padded histories of item ids 1..N (id i = features row i - 1)."""
    rng = np.random.default_rng(seed)
    rows = np.zeros((40, 10), dtype=np.int64)
    for row in rows:
        length = rng.integers(3, 11)
        row[-length:] = rng.integers(1, N_ITEMS + 1, size=length)
    return rows


def _head(name: str) -> FusionHead:
    params = FUSIONS.get(name).tiny_params
    if params is None:
        pytest.fail(f"fusion head {name!r} has no tiny_params: set a class attribute "
                    f"tiny_params = {{...}} with small, fast parameters (see docs/plugins.md)")
    return create_fusion(name, **params)


def _fit(head: FusionHead) -> FusionHead:
    return head.fit(_features(), _sequences() if head.uses_sequences else None)


def test_every_head_declares_tiny_params():
    missing = [n for n in list_fusions() if FUSIONS.get(n).tiny_params is None]
    assert not missing, (f"fusion heads {missing} lack tiny_params: add a class attribute "
                         "tiny_params = {...} (small, fast parameters for the contract tests)")


@pytest.fixture(scope="module", params=list_fusions())
def fitted(request):
    return _fit(_head(request.param))


def test_output_shape_dtype_and_finiteness(fitted):
    out = fitted.transform(_features())
    assert out.dtype == np.float32 and out.ndim == 2 and out.shape[0] == N_ITEMS
    assert out.shape[1] == fitted.get_params().get("dim", out.shape[1])
    assert np.isfinite(out).all()
    assert np.array_equal(fitted.fit_transform(_features(), _sequences() if fitted.uses_sequences
                                               else None), out)


def test_diagnostics_are_json_and_codes_come_with_makes_codes(fitted):
    import json

    json.dumps(fitted.diagnostics())  # the report shows them
    if fitted.makes_codes:
        codes = fitted.codes_
        assert codes.shape[0] == N_ITEMS and codes.ndim == 2 and np.issubdtype(codes.dtype, np.integer)
        assert codes.min() >= 0
    else:
        assert not hasattr(fitted, "codes_")


@pytest.mark.parametrize("name", list_fusions())
def test_transform_before_fit_raises_not_fitted(name):
    with pytest.raises(NotFittedError, match="not fitted yet"):
        _head(name).transform(_features())


def test_fitting_is_deterministic(fitted):
    again = _fit(_head(fitted.name))
    np.testing.assert_array_equal(again.transform(_features()), fitted.transform(_features()))


def test_save_then_load_gives_identical_output(fitted, tmp_path):
    fitted.save(tmp_path / "head")
    loaded = load_fusion(tmp_path / "head")
    assert type(loaded) is type(fitted) and loaded.get_params() == fitted.get_params()
    np.testing.assert_array_equal(loaded.transform(_features()), fitted.transform(_features()))
    other = _features(seed=1)  # fitted state, not the training data, decides the output
    np.testing.assert_array_equal(loaded.transform(other), fitted.transform(other))


def test_save_before_fit_raises(tmp_path):
    for name in list_fusions():
        with pytest.raises(NotFittedError):
            _head(name).save(tmp_path / name)
