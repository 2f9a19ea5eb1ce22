"""Fusion heads: the registry, concat_pca's numbers, masks, errors and save/load."""
from __future__ import annotations

import json

import numpy as np
import pytest
from sklearn.decomposition import PCA
from sklearn.exceptions import NotFittedError

from mmembed.fusion import (
    FusionHead,
    create_fusion,
    get_fusion,
    list_fusions,
    load_fusion,
)
from mmembed.fusion.concat_pca import ConcatPCA


def _features(n=200, seed=0):
    rng = np.random.default_rng(seed)
    text = rng.normal(size=(n, 24)).astype(np.float32) * 3.0
    image = rng.normal(size=(n, 16)).astype(np.float32)
    return {"text": text, "image": image}


def test_registry_lists_and_creates():
    assert "concat_pca" in list_fusions()
    assert issubclass(ConcatPCA, FusionHead)
    assert get_fusion("concat_pca") is ConcatPCA
    head = create_fusion({"name": "concat_pca", "dim": 7, "normalize": False})
    assert isinstance(head, ConcatPCA) and head.dim == 7 and head.normalize is False
    assert create_fusion("concat_pca", dim=5).get_params() == {
        "dim": 5, "normalize": True, "standardize": None, "weights": None, "whiten": False,
        "normalize_output": False,
    }


def test_registry_unknown_name_suggests_nearest():
    with pytest.raises(ValueError, match=r"unknown fusion head 'concat_pc'\. Did you mean 'concat_pca'\?"):
        create_fusion("concat_pc")


def test_unknown_parameter_names_the_valid_ones():
    with pytest.raises(TypeError, match=r"unknown parameter\(s\) \['dims'\]; valid parameters: \['dim', 'normalize', "
                                        r"'standardize', 'weights', 'whiten', 'normalize_output'\]"):
        create_fusion("concat_pca", dims=3)


def test_matches_sklearn_pca_without_normalisation():
    feats = _features()
    out = ConcatPCA(dim=10, normalize=False).fit_transform(feats)
    x = np.concatenate([feats["text"], feats["image"]], axis=1).astype(np.float64)
    ref = PCA(n_components=10, svd_solver="full").fit_transform(x)
    assert out.dtype == np.float32 and out.shape == (200, 10)
    # Same subspace and scores up to each component's sign.
    signs = np.sign((out * ref).sum(axis=0))
    np.testing.assert_allclose(out, ref * signs, atol=1e-4)


def test_normalize_scales_each_block_to_unit_rows():
    feats = _features()
    head = ConcatPCA(dim=6).fit(feats)
    text = feats["text"] / np.linalg.norm(feats["text"], axis=1, keepdims=True)
    image = feats["image"] / np.linalg.norm(feats["image"], axis=1, keepdims=True)
    ref = PCA(n_components=6, svd_solver="full").fit(np.concatenate([text, image], axis=1).astype(np.float64))
    np.testing.assert_allclose(head.mean_, ref.mean_, atol=1e-6)
    np.testing.assert_allclose(head.explained_variance_, ref.explained_variance_, rtol=1e-6)
    np.testing.assert_allclose(np.abs(head.components_), np.abs(ref.components_), atol=1e-6)
    # Sign rule: the largest-magnitude coefficient of every component is positive.
    pivots = head.components_[np.arange(6), np.abs(head.components_).argmax(axis=1)]
    assert (pivots > 0).all()


def test_fewer_items_than_features_uses_the_svd_path():
    rng = np.random.default_rng(1)
    feats = {"a": rng.normal(size=(12, 30)).astype(np.float32)}
    out = ConcatPCA(dim=4, normalize=False).fit_transform(feats)
    ref = PCA(n_components=4, svd_solver="full").fit_transform(feats["a"].astype(np.float64))
    np.testing.assert_allclose(np.abs(out), np.abs(ref), atol=1e-4)


def test_deterministic_and_order_of_blocks_does_not_matter_for_transform():
    feats = _features()
    head = ConcatPCA(dim=8).fit(feats)
    again = ConcatPCA(dim=8).fit(feats).transform(feats)
    np.testing.assert_array_equal(head.transform(feats), again)
    reordered = {"image": feats["image"], "text": feats["text"]}
    np.testing.assert_array_equal(head.transform(reordered), again)


def test_invalid_rows_fit_excluded_and_filled_with_block_mean():
    feats = _features()
    valid_image = np.ones(200, dtype=bool)
    valid_image[[3, 50, 99]] = False
    image = feats["image"].copy()
    image[~valid_image] = 0.0
    masked = {"text": feats["text"], "image": (image, valid_image)}
    head = ConcatPCA(dim=8).fit(masked)
    assert head.n_fit_items_ == 197
    assert head.n_filled_ == {"text": 0, "image": 3}
    # The PCA is the one fitted on the fully valid rows only.
    keep = {"text": feats["text"][valid_image], "image": image[valid_image]}
    ref = ConcatPCA(dim=8).fit(keep)
    np.testing.assert_allclose(head.components_, ref.components_, atol=1e-10)
    # An invalid image block is replaced by the mean normalised image row.
    kept = image[valid_image].astype(np.float64)
    unit = kept / np.linalg.norm(kept, axis=1, keepdims=True)
    np.testing.assert_allclose(head.block_fill_[1], unit.mean(axis=0), atol=1e-12)
    out = head.transform(masked)
    text_row = feats["text"][3].astype(np.float64)
    text_unit = text_row / np.linalg.norm(text_row)
    expected = (np.concatenate([text_unit, unit.mean(axis=0)]) - head.mean_) @ head.components_.T
    np.testing.assert_allclose(out[3], expected, atol=1e-5)
    assert np.isfinite(out).all()


def test_encoded_features_objects_are_accepted():
    from mmembed.encoders.base import EncodedFeatures

    feats = _features()
    wrapped = {k: EncodedFeatures(v, np.ones(len(v), dtype=bool), {}) for k, v in feats.items()}
    np.testing.assert_array_equal(
        ConcatPCA(dim=5).fit_transform(wrapped), ConcatPCA(dim=5).fit_transform(feats)
    )


def test_save_load_round_trip(tmp_path):
    feats = _features()
    head = ConcatPCA(dim=9).fit(feats)
    head.save(tmp_path / "head")
    config = json.loads((tmp_path / "head" / "fusion.json").read_text())
    assert config["name"] == "concat_pca" and config["params"] == {
        "dim": 9, "normalize": True, "standardize": None, "weights": None, "whiten": False,
        "normalize_output": False,
    }
    loaded = load_fusion(tmp_path / "head")
    assert isinstance(loaded, ConcatPCA)
    np.testing.assert_array_equal(loaded.transform(feats), head.transform(feats))
    loaded_direct = ConcatPCA.load(tmp_path / "head")
    np.testing.assert_array_equal(loaded_direct.transform(feats), head.transform(feats))


def test_load_missing_folder_names_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"fusion\.json not found: expected a folder written by FusionHead\.save"):
        load_fusion(tmp_path / "nothing")


def test_transform_before_fit_raises_not_fitted():
    with pytest.raises(NotFittedError, match="not fitted yet"):
        ConcatPCA(dim=4).transform(_features())
    with pytest.raises(NotFittedError):
        ConcatPCA(dim=4).save("/nonexistent/never-written")


def test_dim_larger_than_features_is_a_clear_error():
    with pytest.raises(ValueError, match=r"dim=41 exceeds the number of concatenated features \(40; text: 24, image: 16\)"):
        ConcatPCA(dim=41).fit(_features())


def test_dim_larger_than_items_is_a_clear_error():
    feats = {k: v[:6] for k, v in _features().items()}
    with pytest.raises(ValueError, match=r"dim=8 exceeds the number of items usable for fitting \(6 of 6"):
        ConcatPCA(dim=8).fit(feats)


def test_block_without_valid_rows_is_an_error():
    feats = _features()
    feats["image"] = (feats["image"], np.zeros(200, dtype=bool))
    with pytest.raises(ValueError, match=r"encoder 'image' has no valid item among 200"):
        ConcatPCA(dim=4).fit(feats)


@pytest.mark.parametrize(
    "bad, message",
    [
        ({"a": np.zeros((5, 3)), "b": np.zeros((6, 3))}, r"features disagree on the number of items: \{'a': 5, 'b': 6\}"),
        ({"a": np.zeros(5)}, r"features\['a'\]: expected a numeric 2-D array"),
        ({"a": (np.zeros((5, 3)), np.ones(5))}, r"features\['a'\]: the valid mask must be a bool array of shape \(5,\)"),
        ({"a": np.full((5, 3), np.nan)}, r"features\['a'\]: 5 valid row\(s\) hold NaN or inf \(first rows \[0, 1, 2, 3, 4\]\)"),
        ({}, r"features must be a non-empty mapping"),
    ],
)
def test_bad_features_are_rejected(bad, message):
    with pytest.raises((ValueError, TypeError), match=message):
        ConcatPCA(dim=2).fit(bad)


def test_transform_with_other_encoders_or_dims_is_rejected():
    feats = _features()
    head = ConcatPCA(dim=4).fit(feats)
    with pytest.raises(ValueError, match=r"fitted on \['text', 'image'\]"):
        head.transform({"text": feats["text"]})
    with pytest.raises(ValueError, match=r"features\['image'\] has 15 dims, but the head was fitted with 16"):
        head.transform({"text": feats["text"], "image": feats["image"][:, :15]})


@pytest.mark.parametrize("dim, error", [(0, ValueError), (-3, ValueError), (2.5, TypeError),
                                        (True, TypeError)])
def test_bad_dim_parameter(dim, error):
    with pytest.raises(error, match="dim must be a positive integer"):
        ConcatPCA(dim=dim).fit(_features())
