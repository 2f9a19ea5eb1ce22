"""The rq head: RQ-KMeans semantic IDs over concat_pca vectors."""
from __future__ import annotations

import numpy as np
import pytest

from mmembed.fusion import create_fusion, load_fusion


def _planted(n_clusters: int = 8, per: int = 40, seed: int = 0):
    """Features whose items sit in ``n_clusters`` tight, well-separated clusters."""
    rng = np.random.default_rng(seed)
    truth = np.repeat(np.arange(n_clusters), per)
    centres = rng.normal(size=(n_clusters, 16)) * 5.0
    text = centres[truth] + 0.05 * rng.normal(size=(len(truth), 16))
    image = centres[truth][:, :8] + 0.05 * rng.normal(size=(len(truth), 8))
    return {"text": text.astype(np.float32), "image": image.astype(np.float32)}, truth


def _purity(codes: np.ndarray, truth: np.ndarray) -> float:
    return sum(np.bincount(truth[codes == c]).max() for c in np.unique(codes)) / len(truth)


def test_the_first_level_recovers_planted_clusters():
    features, truth = _planted()
    head = create_fusion("rq", dim=6, levels=2, codes=8, normalize=False).fit(features)
    assert head.codes_.shape == (len(truth), 2) and head.codes_.dtype == np.int32
    assert _purity(head.codes_[:, 0], truth) == 1.0
    assert head.codebook_usage_[0] == 1.0
    np.testing.assert_array_equal(head.encode(features), head.codes_)


def test_reconstruction_improves_with_levels_and_is_the_sum_of_centroids():
    features, _ = _planted(per=30)
    errors = [create_fusion("rq", dim=6, levels=k, codes=8).fit(features).reconstruction_error_
              for k in (1, 2, 3)]
    assert errors[0] > errors[1] > errors[2]
    head = create_fusion("rq", dim=6, levels=3, codes=8).fit(features)
    out = head.transform(features)
    expected = sum(head.centroids_[i][head.codes_[:, i]] for i in range(3))
    np.testing.assert_allclose(out, expected, rtol=0, atol=1e-6)
    assert out.shape == (240, 6) and out.dtype == np.float32


def test_collisions_are_counted_and_balance_spreads_items():
    features, truth = _planted(n_clusters=2, per=50)  # two clusters, eight codes: k-means may pile up
    plain = create_fusion("rq", dim=4, levels=1, codes=8, seed=1).fit(features)
    _, counts = np.unique(plain.codes_, axis=0, return_counts=True)
    assert plain.collision_rate_ == pytest.approx(counts[counts > 1].sum() / 100)
    balanced = create_fusion("rq", dim=4, levels=1, codes=8, balanced=True, seed=1).fit(features)
    assert np.bincount(balanced.codes_[:, 0], minlength=8).max() <= 13  # ceil(100 / 8)
    assert balanced.codebook_usage_[0] == 1.0


def test_saved_and_loaded_rq_gives_the_same_codes(tmp_path):
    features, _ = _planted()
    head = create_fusion("rq", dim=6, levels=2, codes=8).fit(features)
    head.save(tmp_path)
    back = load_fusion(tmp_path)
    np.testing.assert_array_equal(back.codes_, head.codes_)
    np.testing.assert_array_equal(back.transform(features), head.transform(features))
    assert back.collision_rate_ == head.collision_rate_


@pytest.mark.parametrize("params, error, message", [
    ({"levels": 0}, ValueError, r"rq: levels must be"),
    ({"codes": 1000}, ValueError, r"rq: codes=1000 exceeds the 320 items"),
    ({"balanced": "yes"}, TypeError, r"rq: balanced must be True or False"),
])
def test_bad_settings_are_refused(params, error, message):
    features, _ = _planted()
    with pytest.raises(error, match=message):
        create_fusion("rq", **{"dim": 6, **params}).fit(features)


# --------------------------------------------------------------------------- rq_vae


def test_rq_vae_recovers_planted_clusters_and_its_codes_decode_to_its_output():
    features, truth = _planted()
    head = create_fusion("rq_vae", dim=6, levels=2, codes=8, latent_dim=4, hidden=32, steps=400, batch_size=64,
                         normalize=False).fit(features)
    assert head.codes_.shape == (len(truth), 2) and head.codes_.dtype == np.int32
    # the full code (both levels) never mixes two clusters; the loss fell by an order
    assert _purity(head.codes_[:, 0] * 8 + head.codes_[:, 1], truth) == 1.0
    assert head.history_[-1] < head.history_[0] / 10
    out = head.transform(features)
    np.testing.assert_array_equal(out, head.reconstruct(head.codes_))
    assert out.shape == (320, 6) and out.dtype == np.float32 and 0 < head.reconstruction_error_ < 0.1
    assert head.diagnostics()["kind"] == "rq_vae"


def test_rq_vae_is_deterministic_for_a_seed_and_resets_dead_codes():
    features, _ = _planted(n_clusters=2, per=50)  # two clusters, eight codes: most start dead
    a = create_fusion("rq_vae", dim=4, levels=1, codes=8, latent_dim=3, hidden=16, steps=30, batch_size=32, seed=3).fit(features)
    b = create_fusion("rq_vae", dim=4, levels=1, codes=8, latent_dim=3, hidden=16, steps=30, batch_size=32, seed=3).fit(features)
    np.testing.assert_array_equal(a.codes_, b.codes_)
    np.testing.assert_array_equal(a.transform(features), b.transform(features))
    assert a.codebook_usage_[0] > 2 / 8  # more codes in use than the two clusters


@pytest.mark.parametrize("name", ["rq", "rq_vae"])
def test_unique_ids_resolve_collisions_with_a_numbering_level(name):
    features, truth = _planted()  # one level of 8 codes for 8 clusters: every item collides
    params = {"dim": 6, "levels": 1, "codes": 8, "normalize": False}
    if name == "rq_vae":
        params.update(latent_dim=4, hidden=16, steps=50, batch_size=64)
    plain = create_fusion(name, **params).fit(features)
    unique = create_fusion(name, **params, unique_ids=True).fit(features)
    assert plain.collision_rate_ == unique.collision_rate_ > 0.9  # counted on the quantization
    assert unique.codes_.shape == (320, 2) and len(np.unique(unique.codes_, axis=0)) == 320
    np.testing.assert_array_equal(unique.codes_[:, :1], plain.codes_)
    for code in np.unique(plain.codes_[:, 0]):  # the last level numbers each group 0, 1, ...
        members = unique.codes_[plain.codes_[:, 0] == code, 1]
        assert sorted(members.tolist()) == list(range(len(members)))
    np.testing.assert_array_equal(unique.transform(features), plain.transform(features))
    np.testing.assert_array_equal(unique.reconstruct(unique.codes_), unique.reconstruct(unique.codes_[:, :1]))
    assert "resolved" in unique.diagnostics()["collisions"] and "not resolved" in plain.diagnostics()["collisions"]
