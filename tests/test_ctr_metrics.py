"""ctr_eval.metrics: exact AUC with ties and clipped logloss, against scikit-learn."""
from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import log_loss, roc_auc_score

from ctr_eval.metrics import auc, delong, logloss


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_auc_matches_sklearn_with_many_ties(seed):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, 5000)
    scores = rng.integers(0, 7, 5000) + 0.5 * y * rng.integers(0, 2, 5000)  # heavy ties
    assert abs(auc(y, scores) - roc_auc_score(y, scores)) < 1e-12


def test_auc_matches_sklearn_on_float32_probabilities():
    rng = np.random.default_rng(3)
    y = rng.integers(0, 2, 20000)
    p = (1 / (1 + np.exp(-(rng.normal(size=20000) + y)))).astype(np.float32)
    assert abs(auc(y, p) - roc_auc_score(y, p)) < 1e-12


def test_auc_known_values():
    assert auc([0, 0, 1, 1], [0.1, 0.2, 0.3, 0.4]) == 1.0
    assert auc([0, 0, 1, 1], [0.4, 0.3, 0.2, 0.1]) == 0.0
    assert auc([0, 1, 0, 1], [0.5, 0.5, 0.5, 0.5]) == 0.5
    # one tie between a positive and a negative counts one half: (1 + 1 + 0.5 + 1) / 4
    assert auc([0, 0, 1, 1], [0.1, 0.3, 0.3, 0.4]) == 0.875


def test_auc_refuses_bad_input():
    with pytest.raises(ValueError, match="only one class is present"):
        auc([1, 1, 1], [0.1, 0.2, 0.3])
    with pytest.raises(ValueError, match=r"y_score must be finite; row 1 has nan"):
        auc([0, 1], [0.1, float("nan")])
    with pytest.raises(ValueError, match=r"labels must be 0 or 1; row 2 has 2.0"):
        auc([0, 1, 2], [0.1, 0.2, 0.3])
    with pytest.raises(ValueError, match=r"y_true has 2 values but y_score has 3"):
        auc([0, 1], [0.1, 0.2, 0.3])


def test_logloss_matches_sklearn_inside_the_clip_range():
    rng = np.random.default_rng(4)
    y = rng.integers(0, 2, 1000)
    p = rng.uniform(0.01, 0.99, 1000)
    assert abs(logloss(y, p) - log_loss(y, p)) < 1e-12


def test_logloss_clips_at_eps():
    expected = -np.log(1e-7) / 2  # one confident mistake, one perfect hit
    assert logloss([1, 0], [0.0, 0.0]) == pytest.approx(expected + 1e-7 / 2, rel=1e-9)
    assert logloss([1], [1.0], eps=1e-3) == pytest.approx(-np.log(1 - 1e-3), rel=1e-12)


def test_logloss_refuses_non_probabilities():
    with pytest.raises(ValueError, match=r"y_pred must be probabilities in \[0, 1\]; row 0 has 1.5"):
        logloss([1], [1.5])
    with pytest.raises(ValueError, match=r"eps must be in \(0, 0.5\)"):
        logloss([1], [0.5], eps=0.0)


def _delong_by_pairs(y, scores):
    """DeLong's structural components the slow way: every (positive, negative) pair."""
    y = np.asarray(y)
    out_v10, out_v01, aucs = [], [], []
    for s in scores:
        p, n = s[y == 1][:, None], s[y == 0][None, :]
        psi = (p > n) + 0.5 * (p == n)
        out_v10.append(psi.mean(axis=1))
        out_v01.append(psi.mean(axis=0))
        aucs.append(psi.mean())
    v10, v01 = np.array(out_v10), np.array(out_v01)
    return np.array(aucs), np.cov(v10) / v10.shape[1] + np.cov(v01) / v01.shape[1]


def _correlated_scores(rng, n=600):
    y = (rng.random(n) < 0.3).astype(float)
    base = y + rng.standard_normal(n)
    a = base + 0.5 * rng.standard_normal(n)
    b = np.round(base + 0.8 * rng.standard_normal(n), 1)  # ties
    c = rng.standard_normal(n)  # no signal
    return y, np.stack([a, b, c])


@pytest.mark.parametrize("seed", [0, 1])
def test_delong_matches_the_pairwise_definition(seed):
    y, scores = _correlated_scores(np.random.default_rng(seed))
    aucs, cov = delong(y, scores)
    ref_aucs, ref_cov = _delong_by_pairs(y, scores)
    np.testing.assert_allclose(aucs, ref_aucs, rtol=1e-12)
    np.testing.assert_allclose(aucs, [roc_auc_score(y, s) for s in scores], rtol=1e-12)
    np.testing.assert_allclose(cov, ref_cov, rtol=1e-9, atol=1e-15)
    assert cov.shape == (3, 3) and np.allclose(cov, cov.T)


def test_delong_variance_of_a_difference_agrees_with_a_bootstrap():
    rng = np.random.default_rng(3)
    y, scores = _correlated_scores(rng, n=2000)
    aucs, cov = delong(y, scores)
    var_diff = cov[0, 0] + cov[1, 1] - 2 * cov[0, 1]
    pos, neg = np.flatnonzero(y == 1), np.flatnonzero(y == 0)
    diffs = []
    for _ in range(1500):  # stratified: DeLong's variance holds the class counts fixed
        rows = np.r_[rng.choice(pos, pos.size), rng.choice(neg, neg.size)]
        diffs.append(auc(y[rows], scores[0, rows]) - auc(y[rows], scores[1, rows]))
    assert np.var(diffs) == pytest.approx(var_diff, rel=0.15)
    assert var_diff < cov[0, 0] + cov[1, 1]  # correlated scorings: pairing narrows the difference


def test_delong_single_scoring_and_bad_input():
    y = np.array([0, 1, 0, 1, 1, 0])
    aucs, cov = delong(y, [0.1, 0.9, 0.3, 0.2, 0.8, 0.4])
    assert aucs.shape == (1,) and cov.shape == (1, 1)
    assert aucs[0] == pytest.approx(auc(y, [0.1, 0.9, 0.3, 0.2, 0.8, 0.4]))
    with pytest.raises(ValueError, match="at least 2 positives"):
        delong([0, 0, 1], [[0.1, 0.2, 0.3]])
    with pytest.raises(ValueError, match=r"3 values but scores\[0\] has 2"):
        delong([0, 1, 0], [[0.1, 0.2]])
