"""Paired comparisons of recipe rows: intervals over seeds, DeLong for one seed, the gap."""
from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from mmembed.recipes import RecipeError, parse_recipe
from mmembed.recipes.compare import Interval, default_baseline, gap_closed, paired_difference


def _recs(name, aucs, cov=None):
    return [{"embedding": name, "seed": s, "valid_auc": a, **({"valid_auc_cov": cov} if cov else {})}
            for s, a in enumerate(aucs, start=1)]


def test_several_seeds_give_a_student_t_interval_of_the_paired_differences():
    head, base = _recs("head", [0.70, 0.68, 0.69]), _recs("base", [0.60, 0.59, 0.61])
    diff = paired_difference(head, base)
    d = np.array([0.10, 0.09, 0.08])
    half = stats.t.ppf(0.975, 2) * d.std(ddof=1) / np.sqrt(3)
    assert diff.estimate == pytest.approx(0.09) and diff.low == pytest.approx(0.09 - half)
    assert diff.high == pytest.approx(0.09 + half) and diff.method == "seeds" and diff.seeds == 3
    assert diff.verdict == "better" and paired_difference(base, head).verdict == "worse"
    # pairing matters: a shared seed effect cancels, unpaired spreads would overlap
    shared = _recs("a", [0.60, 0.70, 0.65]), _recs("b", [0.59, 0.69, 0.64])
    assert paired_difference(*shared).verdict == "better"
    noisy = _recs("a", [0.61, 0.68, 0.64]), _recs("b", [0.60, 0.70, 0.63])
    assert paired_difference(*noisy).verdict == "undecided"
    # only the seeds both rows have are paired
    assert paired_difference(_recs("a", [0.7, 0.7, 0.7])[:2], base).seeds == 2


def test_one_seed_uses_delong_covariances():
    base = _recs("base", [0.69], {"head": 3e-5, "base": 5e-5})
    half = 1.959964 * np.sqrt(4e-5 + 5e-5 - 2 * 3e-5)  # 0.0107
    for gain, verdict in ((0.02, "better"), (0.01, "undecided"), (-0.02, "worse")):
        head = _recs("head", [0.69 + gain], {"head": 4e-5, "base": 3e-5})
        diff = paired_difference(head, base)
        assert diff.method == "DeLong" and "evaluation noise only" in diff.method_text
        assert (diff.low, diff.high) == pytest.approx((gain - half, gain + half))
        assert diff.verdict == verdict


def test_a_difference_without_covariances_or_shared_seeds_has_no_interval():
    assert paired_difference(_recs("a", [0.7]), _recs("b", [0.6])) is None
    assert paired_difference(_recs("a", [0.7]), [{"embedding": "b", "seed": 9, "valid_auc": 0.6}]) is None


def test_gap_closed_one_seed_matches_a_monte_carlo_of_the_three_aucs():
    names = ("head", "random", "oracle")
    aucs = np.array([0.68, 0.59, 0.75])
    sd = np.array([0.004, 0.005, 0.004])
    corr = np.array([[1, 0.3, 0.5], [0.3, 1, 0.2], [0.5, 0.2, 1]])
    cov = corr * np.outer(sd, sd)
    recs = [_recs(n, [aucs[i]], {m: float(cov[i, j]) for j, m in enumerate(names)}) for i, n in enumerate(names)]
    gap = gap_closed(*recs)
    draws = np.random.default_rng(0).multivariate_normal(aucs, cov, 200_000)
    ratio = (draws[:, 0] - draws[:, 1]) / (draws[:, 2] - draws[:, 1])
    assert gap.estimate == pytest.approx((0.68 - 0.59) / (0.75 - 0.59))
    assert (gap.high - gap.low) / (2 * 1.959964) == pytest.approx(ratio.std(), rel=0.05)


def test_gap_closed_over_seeds_is_the_interval_of_per_seed_ratios():
    gap = gap_closed(_recs("h", [0.70, 0.68]), _recs("r", [0.60, 0.58]), _recs("o", [0.80, 0.78]))
    assert gap.estimate == pytest.approx(0.5) and gap.method == "seeds"
    assert gap.low == pytest.approx(0.5) and gap.high == pytest.approx(0.5)


def test_verdicts_and_default_baseline():
    assert Interval(0.01, 0.001, 0.02, "seeds", 3).verdict == "better"
    assert Interval(-0.01, -0.02, -0.001, "seeds", 3).verdict == "worse"
    assert Interval(0.01, -0.001, 0.02, "seeds", 3).verdict == "undecided"
    assert default_baseline(["provided", "random", "concat_pca", "gated"]) == "concat_pca"
    assert default_baseline(["random", "provided"]) == "provided"
    assert default_baseline(["random", "oracle"]) is None


def test_a_recipe_names_its_baseline_or_gets_the_default():
    assert parse_recipe({"embeddings": ["provided", "random"]}).baseline == "provided"
    assert parse_recipe({"embeddings": ["provided", "random"], "baseline": "random"}).baseline == "random"
    assert parse_recipe({"embeddings": ["random", "oracle"]}).baseline is None
    with pytest.raises(RecipeError, match=r"baseline 'provide' is not one of the embeddings.*did you mean 'provided'"):
        parse_recipe({"embeddings": ["provided", "random"], "baseline": "provide"})


def test_a_model_compared_with_another_model_on_the_same_table():
    from mmembed.recipes.results import format_summary, summary_rows

    base = [0.70, 0.71, 0.69]
    more = [0.72, 0.735, 0.705]
    records = [{"model": m, "embedding": "head", "seed": s + 1, "valid_auc": auc, "baseline": None,
                "compare_to": "qin" if m == "qin+codes" else None}
               for m, aucs in (("qin", base), ("qin+codes", more)) for s, auc in enumerate(aucs)]
    rows = {r["model"]: r for r in summary_rows(records)}
    diffs = np.subtract(more, base)
    half = stats.t.ppf(0.975, 2) * diffs.std(ddof=1) / np.sqrt(3)
    got = rows["qin+codes"]["vs_baseline"]
    assert got.estimate == pytest.approx(diffs.mean()) and got.high - got.estimate == pytest.approx(half)
    assert rows["qin+codes"]["baseline"] == "qin on head" and rows["qin"]["is_baseline"]
    text = format_summary(records)
    assert "| qin | head | 3 | 0.7000 ± 0.0100 | baseline |" in text
    assert f"| qin+codes | head | 3 | 0.7200 ± 0.0150 | {diffs.mean():+.4f} [" in text
    assert "minus that of qin on head" in text
    # the test AUC's paired difference beside the validation's
    test_base, test_more = [0.68, 0.70, 0.69], [0.69, 0.72, 0.695]
    for r in records:
        r["test_auc"] = (test_more if r["model"] == "qin+codes" else test_base)[r["seed"] - 1]
    test_diffs = np.subtract(test_more, test_base)
    got = summary_rows(records)[1]["test_vs_baseline"]
    assert got.estimate == pytest.approx(test_diffs.mean()) and got.low < 0 < got.high
    text = format_summary(records)
    test_cell = f"{np.mean(test_more):.4f} ± {np.std(test_more, ddof=1):.4f}"
    assert f"| {test_cell} | {test_diffs.mean():+.4f} [{got.low:+.4f}, {got.high:+.4f}] |" in text
    assert "(test: the same on the test rows)" in text
    # one reason, said once for the models it holds for
    assert "Gap closed not shown (qin, qin+codes: needs the random and oracle rows)" in text
    one_seed = [r for r in records if r["seed"] == 1]  # two models, one seed: no interval, not zero
    assert summary_rows(one_seed)[1]["vs_baseline"] is None
    assert "; test vs baseline (95% CI): needs 2 or more seeds;" in format_summary(one_seed)
    with pytest.raises(RecipeError, match=r"models\[1\].compare_to \(another model's label\): unknown key 'qn'"):
        parse_recipe({"embeddings": ["random"], "models": ["din", {"name": "qin", "compare_to": "qn"}]})
