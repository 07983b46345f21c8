"""sal.robustness: the seed spread's headline interval and variance split, and the
sensitivity rows, against hand-computed values."""

import numpy as np
import pandas as pd
import pytest

from sal import metrics, robustness


def test_seed_spread_pools_replicates_with_equal_weight_and_splits_the_variance():
    reps = [np.array([0.1, 0.2, 0.3, 0.4]), np.array([0.5, 0.6, 0.7, 0.8])]
    s = robustness.seed_spread([0.25, 0.65], reps, ci_level=0.5)
    assert s.mean == pytest.approx(0.45)
    # pooled 0.1 .. 0.8: the 25% and 75% quantiles (linear interpolation over 8 values)
    assert s.interval == pytest.approx((np.quantile(np.arange(1, 9) / 10, 0.25), np.quantile(np.arange(1, 9) / 10, 0.75)))
    assert s.rule_var == pytest.approx(0.0125)  # var of 4 equally spaced values 0.1 apart: 0.05^2 * 5
    assert s.seed_var == pytest.approx(0.08)  # (0.4^2) / 2
    assert s.dominant == "seed spread" and s.seed_share == pytest.approx(0.08 / 0.0925)
    tight_seeds = robustness.seed_spread([0.3, 0.31], [np.array([0.0, 1.0]), np.array([0.0, 1.0])])
    assert tight_seeds.dominant == "rule resampling"
    one = robustness.seed_spread([0.2], [np.array([0.1, 0.3])])
    assert one.seed_var == 0 and one.dominant == "rule resampling"


def test_seed_spread_refuses_unequal_weights():
    with pytest.raises(ValueError, match="same number of replicates"):
        robustness.seed_spread([0.1, 0.2], [np.zeros(3), np.zeros(4)])
    with pytest.raises(ValueError, match="one replicate set per seed"):
        robustness.seed_spread([0.1], [np.zeros(3), np.zeros(3)])


def test_sal_and_replicates_leaves_empty_categories_out():
    rng = np.random.default_rng(0)
    probs = {"Strict": np.array([]), "Plausible": rng.uniform(0.5, 1, 40), "No": rng.uniform(0, 0.5, 40)}
    point, reps = robustness.sal_and_replicates(probs, bins=10, n_bootstrap=200, seed=1)
    assert point == pytest.approx(1.0)  # disjoint supports over two categories: JSD = 1 bit
    assert reps.shape == (200,) and np.allclose(reps, 1.0)
    with pytest.raises(ValueError, match="two non-empty categories"):
        robustness.sal_and_replicates({"No": probs["No"], "Strict": np.array([])}, 10, 10)


def test_sensitivity_rows_give_mean_and_spread_over_seeds_and_delta_to_the_null():
    a = {"Plausible": np.full(10, 0.95), "No": np.full(10, 0.05)}  # SAL 1 at any B
    b = {"Plausible": np.full(10, 0.35), "No": np.full(10, 0.25)}  # same bin at B=2 (SAL 0), apart at B=10
    same = {"Plausible": np.full(10, 0.5), "No": np.full(10, 0.5)}  # SAL 0
    rows = robustness.sensitivity_rows("bins", [2, 10], [[a, b], [a, b]], [[same, same], [same, same]], [2, 10])
    assert [r["value"] for r in rows] == [2, 10]
    assert rows[0]["sal_mean"] == pytest.approx(0.5) and rows[0]["sal_sd"] == pytest.approx(np.sqrt(0.5))
    assert rows[1]["sal_mean"] == pytest.approx(1.0) and rows[1]["sal_sd"] == pytest.approx(0.0)
    assert rows[1]["delta_mean"] == pytest.approx(1.0) and rows[0]["rules_used"] == 20
    empty = {"Plausible": np.array([]), "No": np.full(10, 0.1)}
    (row,) = robustness.sensitivity_rows("min_premise_count", [30], [[a, empty]], None, 10)
    assert row["computable"] == "1/2" and row["sal_mean"] == pytest.approx(1.0) and np.isnan(row["sal_sd"])
    assert np.isnan(row["delta_mean"]) and row["delta_computable"] == "0/2"


def test_min_premise_count_keeps_a_subset_of_the_uniform_sample():
    labelled = pd.DataFrame({"n_premise": [1, 2, 5, 30, 31], "prob": [0.1] * 5})
    assert robustness.with_min_premise_count(labelled, 5).n_premise.tolist() == [5, 30, 31]
    assert len(robustness.with_min_premise_count(labelled, 1)) == 5


def test_the_pooled_interval_covers_the_seed_spread_when_it_dominates():
    rng = np.random.default_rng(3)
    reps, points = [], []
    for shift in (0.0, 0.3, 0.6):
        probs = {"Plausible": rng.beta(2 + 10 * shift, 2, 60), "No": rng.beta(2, 4, 60)}
        counts = metrics.category_counts(probs, 20)
        points.append(metrics.soundness_aware_level(probs, 20))
        reps.append(metrics.bootstrap_sal(counts, 500, 0))
    s = robustness.seed_spread(points, reps)
    for p, r in zip(points, reps):  # each seed's own CI lies inside the headline interval's range
        assert s.interval[0] <= np.quantile(r, 0.5) <= s.interval[1]
    assert s.interval[1] - s.interval[0] > max(np.quantile(r, 0.975) - np.quantile(r, 0.025) for r in reps)
