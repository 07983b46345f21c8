"""Power analysis of the judge budget: CI width and power versus labelled rules."""

import math

import numpy as np
import pandas as pd
import pytest

from sal import metrics, plots
from sal.config.evaluate import AnalysisConfig, EvalConfig, PowerConfig
from sal.power import pool_from_rules, power_analysis

FAST = dict(n_sim=100, n_bootstrap=100, seed=0)


def _pool(rng, shift=0.0, n=4000):
    """A soundness-agnostic-ish population (Llama-like); ``shift`` separates the categories."""
    return {
        "Strict": rng.beta(5 + 10 * shift, 1.6, n),
        "Plausible": rng.beta(5, 1.7, n),
        "No": rng.beta(5 - 3 * shift, 1.8 + 2 * shift, n),
    }


def test_ci_width_and_sd_shrink_with_n():
    pool = _pool(np.random.default_rng(0))
    t = power_analysis(pool, n_grid=[25, 100, 400], **FAST).table
    assert (np.diff(t["ci_width"]) < 0).all() and (np.diff(t["sal_sd"]) < 0).all()
    assert (np.diff(t["power"]) > 0).all()
    # The plug-in bias shrinks with N too: mean SAL falls towards the population's.
    assert (np.diff(t["sal_mean"]) < 0).all()
    assert t["sal_mean"].iloc[-1] > metrics.soundness_aware_level(pool) - 0.01


def test_two_identical_pools_reject_at_about_alpha():
    rng = np.random.default_rng(1)
    pool = _pool(rng)
    res = power_analysis(pool, pool, n_grid=[100, 300], **FAST)
    assert res.delta == 0 and res.n_required is None
    assert (res.table["power"] <= 0.15).all()


def test_two_different_pools_detected_with_enough_rules():
    rng = np.random.default_rng(2)
    a, b = _pool(rng), _pool(rng, shift=0.5)
    res = power_analysis(a, b, n_grid=[25, 100, 400], **FAST)
    assert res.delta == pytest.approx(
        abs(metrics.soundness_aware_level(a) - metrics.soundness_aware_level(b))
    )
    assert res.table["power"].iloc[-1] > 0.95
    assert res.n_required in {25, 100, 400}


def test_extrapolated_requirement_reaches_target_power():
    pool = _pool(np.random.default_rng(3))
    res = power_analysis(pool, delta=0.05, n_grid=[25, 50], **FAST)
    assert res.n_required > 50 and "extrapolated" in res.recommendation
    check = power_analysis(pool, delta=0.05, n_grid=[res.n_required], n_sim=300,
                           n_bootstrap=20, seed=1)
    assert 0.6 <= check.table["power"].iloc[0] <= 0.97


def test_recommendation_and_cost():
    pool = _pool(np.random.default_rng(4))
    res = power_analysis(pool, delta=0.05, n_grid=[50, 200, 800], tokens_per_judgment=2500,
                         price_per_1k_tokens=0.002, **FAST)
    n = res.n_required
    assert f"at least {n} rules per category" in res.recommendation
    assert f"{3 * n} judgments" in res.recommendation
    row = res.table.set_index("n_per_category").loc[n]
    assert row["cost_usd"] == pytest.approx(3 * n * 2500 / 1000 * 0.002)
    assert f"{3 * n * 2500 / 1000 * 0.002:.2f} USD" in res.recommendation


def test_category_shares_scale_the_number_of_judgments():
    rules = pd.DataFrame(
        {"prob": np.linspace(0.01, 0.99, 100),
         "category": ["Strict"] * 20 + ["Plausible"] * 30 + ["No"] * 50}
    )
    pool, shares = pool_from_rules(rules)
    assert shares == pytest.approx({"Strict": 0.2, "Plausible": 0.3, "No": 0.5})
    res = power_analysis(pool, delta=0.1, n_grid=[40], category_shares=shares, **FAST)
    assert res.table["n_judgments"].iloc[0] == math.ceil(40 / 0.2)


def test_power_plot_written(tmp_path):
    res = power_analysis(_pool(np.random.default_rng(5)), n_grid=[25, 100], **FAST)
    assert plots.plot_power(res, tmp_path / "p.png").read_bytes()[:4] == b"\x89PNG"


def test_configs_validate_and_name_fields():
    EvalConfig()
    AnalysisConfig()
    AnalysisConfig(name="power")
    with pytest.raises(ValueError, match="evaluate.empty_category"):
        EvalConfig(empty_category="skip")
    with pytest.raises(ValueError, match="analysis=compare"):
        AnalysisConfig(name="compare")
    with pytest.raises(ValueError, match="analysis.power.delta"):
        AnalysisConfig(name="power", power=PowerConfig(delta=0))
