"""SAL metric: JSD, histograms, SAL, bootstrap CI and permutation test."""

import json
import math
import warnings

import numpy as np
import pytest
from scipy import stats
from scipy.spatial.distance import jensenshannon

from sal import metrics
from sal.metrics import (
    bootstrap_ci,
    evaluate_sal,
    histogram,
    jsd,
    pairwise_jsd,
    permutation_test,
    sal_at_bins,
    soundness_aware_level,
)


# ----------------------------------------------------------------------------- jsd


def test_jsd_hand_computed_two_distributions():
    # p = (1, 0), q = (1/2, 1/2): m = (3/4, 1/4);
    # KL(p||m) = log2(4/3); KL(q||m) = 1/2 log2(2/3) + 1/2 log2(2).
    expected = 0.5 * (math.log2(4 / 3) + 0.5 * math.log2(2 / 3) + 0.5 * math.log2(2))
    assert jsd([[1, 0], [0.5, 0.5]]) == pytest.approx(expected, abs=1e-12)


def test_jsd_hand_computed_three_distributions():
    # Rows (1,0), (0,1), (1/2,1/2): m = (1/2, 1/2); KLs are 1, 1, 0 bits.
    assert jsd([[1, 0], [0, 1], [0.5, 0.5]]) == pytest.approx(2 / 3, abs=1e-12)


def test_jsd_matches_scipy_for_two_distributions():
    rng = np.random.default_rng(0)
    for _ in range(20):
        p, q = rng.dirichlet(np.ones(12), size=2)
        p[rng.integers(12)] = 0  # exercise the 0 log 0 = 0 convention
        p /= p.sum()
        assert jsd(np.stack([p, q])) == pytest.approx(jensenshannon(p, q, base=2) ** 2, abs=1e-10)


def test_jsd_identical_is_zero_and_disjoint_is_log2_k():
    rho = np.array([0.1, 0.2, 0.7])
    assert jsd(np.stack([rho, rho, rho])) == pytest.approx(0.0, abs=1e-15)
    assert jsd(np.eye(3)) == pytest.approx(math.log2(3), abs=1e-12)
    assert jsd(np.eye(2), base=math.e) == pytest.approx(math.log(2), abs=1e-12)


def test_jsd_normalises_counts_and_batches():
    rng = np.random.default_rng(1)
    d = rng.dirichlet(np.ones(5), size=(4, 3))
    batched = jsd(d)
    assert batched.shape == (4,)
    for i in range(4):
        assert batched[i] == pytest.approx(jsd(d[i] * 17.0), abs=1e-12)


@pytest.mark.parametrize("bad", [[0.5, 0.5], [[1, 0], [0, 0]], [[1, -1], [0, 1]]])
def test_jsd_rejects_bad_input(bad):
    with pytest.raises(ValueError):
        jsd(bad)


# ----------------------------------------------------------------------------- histogram


def test_histogram_edges_and_one_in_last_bin():
    counts = histogram([0.0, 0.05, 0.0999, 0.1, 0.95, 1.0], bins=10, normalize=False)
    assert counts.tolist() == [3, 1, 0, 0, 0, 0, 0, 0, 0, 2]


def test_histogram_matches_numpy_histogram():
    rng = np.random.default_rng(2)
    p = np.concatenate([rng.random(500), np.linspace(0, 1, 41)])  # includes exact edges
    for bins in (10, 20, 50):
        expected, _ = np.histogram(p, bins=bins, range=(0, 1))
        assert histogram(p, bins, normalize=False).tolist() == expected.tolist()
    assert histogram(p, 20).sum() == pytest.approx(1.0)


@pytest.mark.parametrize("bad", [[1.2], [-0.1], [np.nan]])
def test_histogram_rejects_out_of_range(bad):
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        histogram(bad, 10)


# ----------------------------------------------------------------------------- SAL


def _rules(rng, n=(200, 150, 100)):
    return {
        "Strict": rng.beta(8, 1.5, n[0]),
        "Plausible": rng.beta(3, 2, n[1]),
        "No": rng.beta(1.5, 4, n[2]),
    }


def test_sal_is_jsd_of_category_histograms():
    rng = np.random.default_rng(3)
    rules = _rules(rng)
    expected = jsd(np.stack([histogram(v, 20) for v in rules.values()]))
    assert soundness_aware_level(rules, 20) == pytest.approx(expected, abs=1e-12)


def test_sal_invariant_to_rule_and_category_order():
    rng = np.random.default_rng(4)
    rules = _rules(rng)
    shuffled = {k: rng.permutation(v) for k, v in reversed(list(rules.items()))}
    assert soundness_aware_level(shuffled, 20) == pytest.approx(
        soundness_aware_level(rules, 20), abs=1e-12
    )


def test_sal_bounds_on_extremes():
    same = {c: np.linspace(0, 1, 30) for c in metrics.CATEGORIES}
    assert soundness_aware_level(same, 10) == pytest.approx(0.0, abs=1e-12)
    apart = {"Strict": [0.99] * 5, "Plausible": [0.5] * 7, "No": [0.01] * 3}
    assert soundness_aware_level(apart, 10) == pytest.approx(math.log2(3), abs=1e-12)


def test_empty_category_error_names_it_and_drop_warns():
    rules = {"Strict": [0.9, 0.95], "Plausible": [], "No": [0.1, 0.2]}
    with pytest.raises(ValueError, match="'Plausible'"):
        soundness_aware_level(rules, 10)
    with pytest.warns(UserWarning, match="Plausible"):
        dropped = soundness_aware_level(rules, 10, drop_empty=True)
    assert dropped == pytest.approx(1.0)  # two disjoint histograms: 1 bit


def test_pairwise_jsd_names_and_values():
    rng = np.random.default_rng(5)
    rules = _rules(rng)
    pw = pairwise_jsd(rules, 20)
    assert list(pw) == ["S-P", "S-N", "P-N"]
    hs = {k: histogram(v, 20) for k, v in rules.items()}
    assert pw["S-N"] == pytest.approx(jensenshannon(hs["Strict"], hs["No"], base=2) ** 2)


def test_sal_at_bins_reports_each_b():
    rng = np.random.default_rng(6)
    rules = _rules(rng)
    out = sal_at_bins(rules, [10, 20, 50])
    assert list(out) == [10, 20, 50]
    assert out[50] == pytest.approx(soundness_aware_level(rules, 50))


# ----------------------------------------------------------------------------- uncertainty


def test_permutation_p_value_uniform_without_signal():
    rng = np.random.default_rng(7)
    pvals = []
    for seed in range(100):
        pool = rng.beta(4, 2, 300)
        rules = {"Strict": pool[:100], "Plausible": pool[100:200], "No": pool[200:]}
        pvals.append(permutation_test(rules, 20, n_permutations=199, seed=seed).p_value)
    pvals = np.array(pvals)
    assert stats.kstest(pvals, "uniform").pvalue > 0.01
    assert np.mean(pvals < 0.05) <= 0.15


def test_permutation_p_value_tiny_when_separated():
    rng = np.random.default_rng(8)
    rules = _rules(rng, n=(60, 60, 60))
    res = permutation_test(rules, 20, n_permutations=999, seed=0)
    assert res.p_value == pytest.approx(1 / 1000)
    assert res.null_quantile_95 < res.sal / 2


def test_permutation_null_mean_matches_plug_in_bias_formula():
    # With no signal, E[SAL] ~ (K - 1)(B - 1) / (2 N ln 2) bits when every bin is populated.
    rng = np.random.default_rng(9)
    pool = rng.random(1500)
    rules = {"Strict": pool[:500], "Plausible": pool[500:1000], "No": pool[1000:]}
    res = permutation_test(rules, 20, n_permutations=2000, seed=1)
    assert res.null_mean == pytest.approx(2 * 19 / (2 * 1500 * math.log(2)), rel=0.15)


def test_bootstrap_ci_is_seeded_and_covers_truth():
    # Population histograms are known exactly; sample rules from them and check coverage.
    rng = np.random.default_rng(10)
    bins = 10
    rho = np.stack([rng.dirichlet(np.ones(bins) * a) for a in (0.6, 1.0, 3.0)])
    truth = jsd(rho)
    centres = (np.arange(bins) + 0.5) / bins
    hits = 0
    for rep in range(60):
        rules = {
            c: centres[rng.choice(bins, size=800, p=rho[i])]
            for i, c in enumerate(metrics.CATEGORIES)
        }
        lo, hi = bootstrap_ci(rules, bins, n_bootstrap=300, ci_level=0.95, seed=rep)
        hits += lo <= truth <= hi
    assert hits / 60 >= 0.8
    assert bootstrap_ci(rules, bins, 200, seed=3) == bootstrap_ci(rules, bins, 200, seed=3)


def test_bootstrap_matches_resampling_rules_directly():
    # The multinomial shortcut must give the same distribution as resampling rules.
    rng = np.random.default_rng(11)
    rules = _rules(rng, n=(80, 60, 40))
    fast = metrics.bootstrap_sal(metrics.category_counts(rules, 20), 3000, seed=0)
    slow = [
        soundness_aware_level({k: rng.choice(v, v.size) for k, v in rules.items()}, 20)
        for _ in range(600)
    ]
    assert np.mean(fast) == pytest.approx(np.mean(slow), abs=0.01)
    assert np.std(fast) == pytest.approx(np.std(slow), rel=0.15)


def test_evaluate_sal_collects_everything_and_serialises():
    rng = np.random.default_rng(12)
    rules = _rules(rng)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        res = evaluate_sal(rules, bins=20, n_bootstrap=200, n_permutations=199, seed=0)
    assert res.sal == pytest.approx(soundness_aware_level(rules, 20))
    assert res.ci[0] <= res.ci[1]
    assert res.counts == {"Strict": 200, "Plausible": 150, "No": 100}
    assert set(res.sal_by_bins) == {10, 20, 50}
    assert res.p_value == pytest.approx(1 / 200)
    json.dumps(res.to_dict())


def test_probs_by_category_from_frame():
    import pandas as pd

    df = pd.DataFrame({"prob": [0.1, 0.9, 0.5], "category": ["No", "Strict", "No"]})
    out = metrics.probs_by_category_from_frame(df)
    assert out["No"].tolist() == [0.1, 0.5] and out["Plausible"].size == 0
    with pytest.raises(ValueError, match="Maybe"):
        metrics.probs_by_category_from_frame(df.assign(category=["No", "Maybe", "No"]))


# --------------------------------------------------------------------------- ΔSAL vs the null twin
def _two_sided_world(seed=0):
    rng = np.random.default_rng(seed)
    model = {"Strict": rng.beta(8, 2, 60), "Plausible": rng.beta(5, 5, 60), "No": rng.beta(2, 8, 60)}
    null = {"Plausible": rng.beta(4, 4, 60), "No": rng.beta(4, 4, 80)}  # no Strict rule: dropped on its side
    return model, null


def test_delta_sal_is_the_difference_of_each_sides_sal():
    model, null = _two_sided_world()
    r = metrics.delta_sal(model, null, bins=20, n_bootstrap=200, n_permutations=200)
    expected_null = metrics.soundness_aware_level(null, 20, drop_empty=True)
    assert r.sal_model == pytest.approx(metrics.soundness_aware_level(model, 20))
    assert r.sal_null == pytest.approx(expected_null)
    assert r.delta == pytest.approx(r.sal_model - r.sal_null)
    assert r.ci[0] <= r.delta <= r.ci[1]
    assert r.p_value == pytest.approx(1 / 201)  # well separated model, text-only null


def test_delta_sal_of_a_run_against_itself_is_zero_and_not_significant():
    _, null = _two_sided_world()
    r = metrics.delta_sal(null, null, n_bootstrap=200, n_permutations=400, seed=1)
    assert r.delta == 0.0 and r.ci[0] < 0 < r.ci[1] and r.p_value > 0.2


def test_delta_sal_permutation_p_matches_exact_enumeration():
    """Two categories, four rules each side: every reassignment of each category's pooled
    rules (C(8,4)^2 = 4,900) enumerated by brute force gives the exact p-value."""
    import itertools

    model = {"Plausible": [0.91, 0.87, 0.95, 0.62], "No": [0.08, 0.12, 0.33, 0.41]}
    null = {"Plausible": [0.55, 0.47, 0.71, 0.12], "No": [0.52, 0.38, 0.66, 0.24]}
    bins = 10
    observed = metrics.soundness_aware_level(model, bins) - metrics.soundness_aware_level(null, bins)
    pooled = {k: model[k] + null[k] for k in model}
    splits = list(itertools.combinations(range(8), 4))
    hits = 0
    for sp, sn in itertools.product(splits, splits):
        m = {"Plausible": [pooled["Plausible"][i] for i in sp], "No": [pooled["No"][i] for i in sn]}
        n = {"Plausible": [pooled["Plausible"][i] for i in range(8) if i not in sp],
             "No": [pooled["No"][i] for i in range(8) if i not in sn]}
        d = metrics.soundness_aware_level(m, bins) - metrics.soundness_aware_level(n, bins)
        hits += d >= observed - 1e-12
    exact = hits / len(splits) ** 2
    r = metrics.delta_sal(model, null, bins=bins, n_bootstrap=10, n_permutations=20000, seed=3)
    assert r.delta == pytest.approx(observed)
    assert r.p_value == pytest.approx(exact, abs=0.01)
