"""ctr_eval.metrics: exact AUC with ties and clipped logloss, against scikit-learn."""
from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import log_loss, roc_auc_score

from ctr_eval.metrics import auc, logloss


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
