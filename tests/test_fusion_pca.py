"""concat_pca's options and the modality_pca head, against sklearn and hand computations."""
from __future__ import annotations

import json

import numpy as np
import pytest
from sklearn.decomposition import PCA
from sklearn.preprocessing import StandardScaler

from mmembed.fusion import create_fusion, list_fusions, load_fusion
from mmembed.fusion._pca import whitening_divisor
from mmembed.fusion.concat_pca import ConcatPCA
from mmembed.fusion.modality_pca import ModalityPCA, split_by_variance, split_equally

N = 240


def _features(seed=0):
    """text: 12 dims of mixed scales; image: 8 dims, a rank-2 signal plus small noise."""
    rng = np.random.default_rng(seed)
    text = rng.normal(size=(N, 12)) * np.linspace(0.5, 3.0, 12)
    image = rng.normal(size=(N, 2)) @ rng.normal(size=(2, 8)) + 0.01 * rng.normal(size=(N, 8))
    return {"text": text.astype(np.float32), "image": (image + 1.0).astype(np.float32)}


def _masked(seed=0):
    feats = _features(seed)
    valid = np.ones(N, dtype=bool)
    valid[[2, 30, 111, 200]] = False
    image = feats["image"].copy()
    image[~valid] = 0.0
    return {"text": feats["text"], "image": (image, valid)}, valid


def _unit(x):
    x = np.asarray(x, dtype=np.float64)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _assert_equal_up_to_sign(out, ref, atol=1e-4):
    assert out.shape == ref.shape
    signs = np.sign((out * ref).sum(axis=0))
    signs[signs == 0] = 1.0
    np.testing.assert_allclose(out, ref * signs, atol=atol)


# -- concat_pca options -------------------------------------------------------------------
def test_column_standardisation_matches_standard_scaler_then_pca():
    feats = _features()
    out = ConcatPCA(dim=6, normalize=False, standardize="column").fit_transform(feats)
    joined = np.concatenate([StandardScaler().fit_transform(feats[k].astype(np.float64))
                             for k in ("text", "image")], axis=1)
    _assert_equal_up_to_sign(out, PCA(n_components=6, svd_solver="full").fit_transform(joined))


def test_block_standardisation_gives_each_block_unit_total_variance():
    feats = _features()
    head = ConcatPCA(dim=5, standardize="block").fit(feats)
    parts = []
    for name in ("text", "image"):
        x = _unit(feats[name])
        centred = x - x.mean(axis=0)
        parts.append(centred / np.sqrt(centred.var(axis=0).sum()))
        assert parts[-1].var(axis=0).sum() == pytest.approx(1.0)
    joined = np.concatenate(parts, axis=1)
    ref = PCA(n_components=5, svd_solver="full").fit(joined)
    np.testing.assert_allclose(head.explained_variance_, ref.explained_variance_, rtol=1e-8)
    _assert_equal_up_to_sign(head.transform(feats), ref.transform(joined))
    np.testing.assert_allclose(head.block_scale_[0], np.sqrt(_unit(feats["text"]).var(axis=0).sum()))


def test_standardisation_uses_valid_rows_and_filled_rows_become_zero():
    feats, valid = _masked()
    head = ConcatPCA(dim=4, normalize=False, standardize="column").fit(feats)
    kept = feats["image"][0][valid].astype(np.float64)
    np.testing.assert_allclose(head.block_shift_[1], kept.mean(axis=0), atol=1e-10)
    np.testing.assert_allclose(head.block_scale_[1], kept.std(axis=0), atol=1e-10)
    # Row 2 has no image: its image block is the (standardised) mean, i.e. zeros.
    text = feats["text"][2].astype(np.float64)
    row = np.concatenate([(text - head.block_shift_[0]) / head.block_scale_[0], np.zeros(8)])
    np.testing.assert_allclose(head.transform(feats)[2], (row - head.mean_) @ head.components_.T, atol=1e-4)


def test_constant_column_is_only_centred():
    feats = _features()
    text = feats["text"].copy()
    text[:, 3] = 2.5
    head = ConcatPCA(dim=4, normalize=False, standardize="column").fit({"text": text})
    assert head.block_scale_[0][3] == 1.0 and np.isfinite(head.transform({"text": text})).all()


def test_weights_multiply_each_block_before_pca():
    feats = _features()
    out = ConcatPCA(dim=6, normalize=False, weights={"image": 3.0, "text": 0.5}).fit_transform(feats)
    joined = np.concatenate([0.5 * feats["text"], 3.0 * feats["image"]], axis=1).astype(np.float64)
    _assert_equal_up_to_sign(out, PCA(n_components=6, svd_solver="full").fit_transform(joined))


def test_weights_shift_the_components_towards_the_heavier_block():
    feats = _features()

    def image_share(weight):
        head = ConcatPCA(dim=3, standardize="block", weights={"image": weight}).fit(feats)
        return float((head.components_[:, 12:] ** 2).sum() / 3)  # mass on the image block

    shares = [image_share(w) for w in (0.25, 1.0, 4.0)]
    assert shares[0] < 0.05 and shares[0] < shares[1] < shares[2] and shares[2] > 0.6


def test_whitening_matches_sklearn_and_gives_unit_variance_on_fit_rows():
    feats = _features()
    out = ConcatPCA(dim=5, normalize=False, whiten=True).fit_transform(feats)
    joined = np.concatenate([feats["text"], feats["image"]], axis=1).astype(np.float64)
    _assert_equal_up_to_sign(out, PCA(n_components=5, whiten=True, svd_solver="full").fit_transform(joined))
    masked, valid = _masked()
    out = ConcatPCA(dim=5, whiten=True).fit_transform(masked)
    np.testing.assert_allclose(out[valid].var(axis=0, ddof=1), 1.0, rtol=1e-4)
    np.testing.assert_allclose(out[valid].mean(axis=0), 0.0, atol=1e-5)


def test_whitening_leaves_numerically_zero_components_unscaled():
    np.testing.assert_array_equal(whitening_divisor(np.array([4.0, 1.0, 1e-20, 0.0])), [2.0, 1.0, 1.0, 1.0])
    mixing = np.random.default_rng(3).normal(size=(2, 6))
    rank_two = (_features()["text"][:, :2] @ mixing).astype(np.float32)  # rank 2 in 6 dims
    out = ConcatPCA(dim=4, normalize=False, whiten=True).fit_transform({"a": rank_two})
    assert np.abs(out[:, 2:]).max() < 1e-3 and np.allclose(out[:, :2].var(axis=0, ddof=1), 1.0, rtol=1e-4)


def test_normalize_output_gives_unit_rows_of_the_same_directions():
    feats = _features()
    plain = ConcatPCA(dim=6, whiten=True).fit_transform(feats)
    unit = ConcatPCA(dim=6, whiten=True, normalize_output=True).fit_transform(feats)
    np.testing.assert_allclose(np.linalg.norm(unit, axis=1), 1.0, atol=1e-6)
    np.testing.assert_allclose(unit, _unit(plain), atol=1e-6)


def test_concat_options_save_and_load(tmp_path):
    feats, _ = _masked()
    params = {"dim": 5, "normalize": True, "standardize": "column", "weights": {"image": 2.0},
              "whiten": True, "normalize_output": True}
    head = ConcatPCA(**params).fit(feats)
    head.save(tmp_path / "h")
    assert json.loads((tmp_path / "h" / "fusion.json").read_text())["params"] == params
    loaded = load_fusion(tmp_path / "h")
    assert loaded.get_params() == params and loaded.block_weights_ == [1.0, 2.0]
    np.testing.assert_array_equal(loaded.transform(feats), head.transform(feats))


def test_head_saved_before_the_options_still_loads(tmp_path):
    """A folder in the format concat_pca wrote before these options existed (per-head
    layout, no weights, no standardisation), written here as that version wrote it."""
    feats, _ = _masked()
    head = ConcatPCA(dim=6).fit(feats)
    folder = tmp_path / "old"
    folder.mkdir()
    state = {"block_names": head.block_names_, "block_dims": head.block_dims_, "n_filled": head.n_filled_,
             "n_fit_items": head.n_fit_items_, "n_features_in": head.n_features_in_}
    arrays = {"mean": head.mean_, "components": head.components_, "explained_variance": head.explained_variance_,
              "explained_variance_ratio": head.explained_variance_ratio_,
              **{f"fill_{i}": fill for i, fill in enumerate(head.block_fill_)}}
    (folder / "fusion.json").write_text(json.dumps(
        {"name": "concat_pca", "params": {"dim": 6, "normalize": True}, "state": state}))
    np.savez(folder / "fusion_state.npz", **arrays)
    loaded = load_fusion(folder)
    assert loaded.get_params()["standardize"] is None and loaded.block_weights_ == [1.0, 1.0]
    np.testing.assert_array_equal(loaded.transform(feats), head.transform(feats))


@pytest.mark.parametrize("params, error, message", [
    ({"standardize": "z"}, ValueError, r"concat_pca: standardize must be None, 'column' or 'block', got 'z'"),
    ({"standardize": True}, TypeError, r"standardize must be None, 'column' or 'block', got True"),
    ({"weights": [1.0]}, TypeError, r"concat_pca: weights must be None or a mapping"),
    ({"weights": {"text": "2"}}, TypeError, r"weights\['text'\] must be a number, got '2'"),
    ({"weights": {"text": 0.0}}, ValueError, r"weights\['text'\] must be a finite number > 0, got 0\.0"),
    ({"weights": {"text": float("inf")}}, ValueError, r"weights\['text'\] must be a finite number > 0"),
    ({"weights": {"audio": 2.0}}, ValueError,
     (r"concat_pca: weights names encoder\(s\) \['audio'\] that are not among the features; "
      r"the encoders are \['text', 'image'\]")),
    ({"whiten": 1}, TypeError, r"concat_pca: whiten must be True or False, got 1"),
    ({"normalize_output": "yes"}, TypeError, r"normalize_output must be True or False"),
])
def test_bad_concat_options(params, error, message):
    with pytest.raises(error, match=message):
        ConcatPCA(dim=3, **params).fit(_features())


def test_unknown_weight_name_is_refused_before_any_encoder_runs():
    with pytest.raises(ValueError, match=r"weights names encoder\(s\) \['clip'\]"):
        ConcatPCA(weights={"clip": 2.0}).check_input_widths({"sbert": 384})


# -- modality_pca: width split --------------------------------------------------------------
def test_split_by_variance_gives_slots_to_the_largest_remaining_shares():
    ratios = [np.array([0.5, 0.3, 0.2]), np.array([0.9, 0.06, 0.04])]
    assert split_by_variance(ratios, 2) == [1, 1]
    assert split_by_variance(ratios, 4) == [3, 1]
    assert split_by_variance(ratios, 5) == [3, 2]
    assert split_by_variance([np.array([0.5, 0.5]), np.array([0.5, 0.5])], 3) == [2, 1]  # tie: earlier


def test_split_equally_gives_the_remainder_to_the_first_blocks():
    assert split_equally(10, 3) == [4, 3, 3] and split_equally(6, 2) == [3, 3]


def test_variance_split_favours_the_block_whose_variance_spreads_wider():
    head = ModalityPCA(dim=6, normalize=False).fit(_features())
    # image is rank 2 (two shares near 0.5, the rest ~0); text spreads over 12 dims.
    assert head.block_widths_ == {"text": 4, "image": 2}
    assert list(head.block_widths_) == head.block_names_ == ["text", "image"]
    assert sum(head.block_widths_.values()) == 6
    assert head.explained_variance_ratio_[1].sum() > 0.99


def test_equal_and_explicit_splits():
    feats = _features()
    assert ModalityPCA(dim=7, split="equal").fit(feats).block_widths_ == {"text": 4, "image": 3}
    head = ModalityPCA(dim=7, split={"image": 5, "text": 2}).fit(feats)
    assert head.block_widths_ == {"text": 2, "image": 5}
    assert [c.shape for c in head.components_] == [(2, 12), (5, 8)]


@pytest.mark.parametrize("params, error, message", [
    ({"dim": 6, "split": {"text": 2, "image": 3}}, ValueError,
     r"the widths in split \{'text': 2, 'image': 3\} sum to 5, but dim=6"),
    ({"dim": 5, "split": {"text": 2, "audio": 3}}, ValueError,
     r"split names encoder\(s\) \['audio'\] that are not among the features; the encoders are \['text', 'image'\]"),
    ({"dim": 5, "split": {"text": 5}}, ValueError, r"split gives no width for encoder\(s\) \['image'\]"),
    ({"dim": 10, "split": {"text": 1, "image": 9}}, ValueError,
     r"split=\{'text': 1, 'image': 9\} asks \{'image': 9\}, more than these encoders give \(dims: \{'image': 8\}\)"),
    ({"dim": 5, "split": {"text": 2.0, "image": 3}}, TypeError, r"split\['text'\] must be a positive integer"),
    ({"dim": 5, "split": {"text": 0, "image": 5}}, ValueError, r"split\['text'\] must be a positive integer"),
    ({"dim": 5, "split": "proportional"}, ValueError, r"split must be 'variance', 'equal' or a mapping"),
    ({"dim": 5, "split": 3}, TypeError, r"split must be 'variance', 'equal' or a mapping .*got int 3"),
    ({"dim": 18, "split": "equal"}, ValueError, r"split='equal' asks \{'image': 9\}, more than these encoders give"),
    ({"dim": 21}, ValueError, r"dim=21 exceeds what the blocks can give \(20; dims per encoder"),
    ({"dim": 3, "weights": {"audio": 1.0}}, ValueError, r"weights names encoder\(s\) \['audio'\]"),
    ({"dim": 0}, ValueError, r"modality_pca: dim must be a positive integer"),
])
def test_bad_modality_options(params, error, message):
    with pytest.raises(error, match=message):
        ModalityPCA(**params).fit(_features())


def test_every_block_needs_a_dim_and_enough_valid_items():
    with pytest.raises(ValueError, match=r"dim=1 is less than the number of encoders \(2: \['text', 'image'\]\)"):
        ModalityPCA(dim=1).check_input_widths({"text": 12, "image": 8})
    feats, _ = _masked()
    few = (feats["image"][0], np.arange(N) < 3)  # 3 valid images
    with pytest.raises(ValueError, match=r"asks \{'image': 5\}, more than these encoders give "
                                         r"\(min\(dims, valid items\): \{'image': 3\}\)"):
        ModalityPCA(dim=10, split="equal").fit({"text": feats["text"], "image": few})


# -- modality_pca: numbers ------------------------------------------------------------------
def test_slices_are_per_block_pca_fitted_on_that_blocks_valid_rows():
    feats, valid = _masked()
    out = ModalityPCA(dim=7, split={"text": 4, "image": 3}, normalize=False).fit_transform(feats)
    text_ref = PCA(n_components=4, svd_solver="full").fit_transform(feats["text"].astype(np.float64))
    _assert_equal_up_to_sign(out[:, :4], text_ref)
    image = feats["image"][0].astype(np.float64)
    image_ref = PCA(n_components=3, svd_solver="full").fit(image[valid]).transform(image)
    _assert_equal_up_to_sign(out[valid, 4:], image_ref[valid])
    np.testing.assert_allclose(out[~valid, 4:], 0.0, atol=1e-5)  # missing cover: the block mean


@pytest.mark.parametrize("options", [
    {},
    {"normalize": False},
    {"standardize": "column", "whiten": True},
    {"standardize": "block", "normalize_output": True},
    {"whiten": True, "normalize_output": True},
])
def test_one_encoder_equals_concat_pca_with_the_same_options(options):
    feats, _ = _masked()
    one = {"image": feats["image"]}
    modality = ModalityPCA(dim=5, **options).fit(one)
    concat = ConcatPCA(dim=5, **options).fit(one)
    _assert_equal_up_to_sign(modality.transform(one), concat.transform(one), atol=1e-6)
    assert modality.block_widths_ == {"image": 5}


def test_whitening_gives_unit_variance_per_component_on_each_blocks_fit_rows():
    feats, valid = _masked()
    out = ModalityPCA(dim=6, split="equal", whiten=True).fit_transform(feats)
    np.testing.assert_allclose(out[:, :3].var(axis=0, ddof=1), 1.0, rtol=1e-4)
    np.testing.assert_allclose(out[valid, 3:].var(axis=0, ddof=1), 1.0, rtol=1e-4)


def test_weights_scale_a_blocks_slice_even_when_whitened():
    feats = _features()
    plain = ModalityPCA(dim=6, whiten=True).fit_transform(feats)
    weighted = ModalityPCA(dim=6, whiten=True, weights={"image": 3.0}).fit_transform(feats)
    widths = ModalityPCA(dim=6).fit(feats).block_widths_
    cut = widths["text"]
    np.testing.assert_allclose(weighted[:, :cut], plain[:, :cut], atol=1e-6)
    np.testing.assert_allclose(weighted[:, cut:], 3.0 * plain[:, cut:], atol=1e-5)
    # With unit output rows, the heavier block takes a larger part of every row's norm.
    share = [np.mean(np.linalg.norm(ModalityPCA(dim=6, whiten=True, normalize_output=True,
                                                weights={"image": w}).fit_transform(feats)[:, cut:], axis=1) ** 2)
             for w in (0.5, 1.0, 2.0)]
    assert share[0] < share[1] < share[2]


def test_modality_save_load_round_trip(tmp_path):
    feats, _ = _masked()
    params = {"dim": 6, "split": {"text": 4, "image": 2}, "normalize": True, "standardize": "block",
              "weights": {"text": 0.5}, "whiten": True, "normalize_output": False}
    head = ModalityPCA(**params).fit(feats)
    head.save(tmp_path / "m")
    loaded = load_fusion(tmp_path / "m")
    assert isinstance(loaded, ModalityPCA) and loaded.get_params() == params
    assert loaded.block_widths_ == {"text": 4, "image": 2}
    assert loaded.n_fit_items_ == {"text": N, "image": N - 4}
    np.testing.assert_array_equal(loaded.transform(feats), head.transform(feats))


def test_modality_pca_is_registered_with_its_parameters():
    assert "modality_pca" in list_fusions()
    head = create_fusion({"name": "modality_pca", "dim": 8, "split": "equal"})
    assert isinstance(head, ModalityPCA) and head.get_params() == {
        "dim": 8, "split": "equal", "normalize": True, "standardize": None, "weights": None,
        "whiten": False, "normalize_output": False,
    }
    assert "split" in ModalityPCA.__doc__ and "whiten" in ConcatPCA.__doc__
