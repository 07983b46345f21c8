"""Cross-model analysis: exponential-power fit, leave-one-out, Spearman table, figures."""

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from sal import analysis, plots
from sal.analysis import compare, fit_exp_power, leave_one_out, spearman_table

PUBLISHED_CSV = Path(__file__).resolve().parent / "data" / "paper" / "simplerl_zoo_post_rl.csv"
"""The published post-RL accuracies, as shipped in the spec's reference folder."""


def _noiseless(alpha=3.2, beta=0.8, n=8):
    s = np.linspace(0.03, 0.6, n)
    return s, np.exp(-alpha * s**beta)


def test_fit_recovers_known_parameters_from_noiseless_data():
    for alpha, beta in [(3.2, 0.8), (4.246, 1.09), (1.5, 1.6)]:
        s, e = _noiseless(alpha, beta)
        fit = fit_exp_power(s, e)
        assert fit.alpha == pytest.approx(alpha, rel=1e-5)
        assert fit.beta == pytest.approx(beta, rel=1e-5)
        assert fit.r2 == pytest.approx(1.0, abs=1e-9)


def test_fit_r2_is_on_error_scale():
    s, e = _noiseless()
    e_noisy = e + np.array([0.01, -0.02, 0.015, 0.0, -0.01, 0.02, -0.015, 0.005])
    fit = fit_exp_power(s, e_noisy)
    resid = e_noisy - np.exp(-fit.alpha * s**fit.beta)
    expected = 1 - np.sum(resid**2) / np.sum((e_noisy - e_noisy.mean()) ** 2)
    assert fit.r2 == pytest.approx(expected, abs=1e-12)
    assert fit.alpha > 0 and fit.beta > 0


@pytest.mark.parametrize(
    "sal,err,match",
    [([0.1, 0.2], [0.5, 0.4], "at least 3"), ([0.1, 0.2, 0.3], [0.5, 0.4, 55.0], "1 - accuracy"),
     ([0.1, 0.2, 0.3], [0.5, 0.4], "differ")],
)
def test_fit_rejects_bad_input(sal, err, match):
    with pytest.raises(ValueError, match=match):
        fit_exp_power(sal, err)


def test_leave_one_out_equals_refits_without_each_model():
    s, e = _noiseless()
    e = e * np.array([1.02, 0.97, 1.01, 1.0, 0.98, 1.03, 0.99, 1.0])
    loo = leave_one_out(s, e)
    for i in (0, 4, 7):
        keep = np.arange(s.size) != i
        f = fit_exp_power(s[keep], e[keep])
        assert loo.predictions[i] == pytest.approx(np.exp(-f.alpha * s[i] ** f.beta), rel=1e-6)
    s0, e0 = _noiseless()
    assert leave_one_out(s0, e0).r2 == pytest.approx(1.0, abs=1e-6)


def test_spearman_table_layout_and_values():
    acc = pd.DataFrame(
        {
            "model": list("abcdefg"),
            "avg": [10, 20, 30, 40, 50, 60, 70],
            "amc23": [70, 60, 50, 40, 30, 20, 10],
            "math500": [1, 3, 2, 5, 4, 7, 6],
        }
    )
    sal = dict(zip("abcdefg", [0.01, 0.02, 0.03, 0.04, 0.05, 0.06, 0.07]))
    t = spearman_table(sal, acc, benchmarks=["amc23", "math500", "avg"])
    assert t.loc["avg", "rho_pct"] == pytest.approx(100.0)
    assert t.loc["amc23", "rho_pct"] == pytest.approx(-100.0)
    # math500 ranks differ from SAL's by swapped neighbours: rho = 1 - 6 * sum d^2 / (n(n^2-1)).
    assert t.loc["math500", "rho_pct"] == pytest.approx(100 * (1 - 6 * 6 / (7 * 48)))
    assert t.loc["avg", "stars"] == "**" and t.loc["avg", "cell"] == "100.00**"
    assert t.loc["avg", "header"] == "Avg. Acc."


def test_significance_stars_thresholds():
    assert [analysis.significance_stars(p) for p in (0.001, 0.0099, 0.01, 0.049, 0.05)] == [
        "**", "**", "*", "*", "",
    ]


def test_packaged_tables():
    acc = analysis.load_reference_accuracy()
    assert "avg" in acc and len(acc) == 7
    pd.testing.assert_frame_equal(acc, pd.read_csv(PUBLISHED_CSV))
    ref = analysis.load_paper_sal()
    assert "qwen2.5-1.5b" not in ref and ref["llama-3.1-8b"] == pytest.approx(0.058)


def test_compare_reproduces_paper_fit_within_tolerance():
    # Tolerance: the README's SAL values are read from figures to about +-0.005 bits; under
    # that reading noise alpha spans about 3.8-4.3, beta 1.00-1.07, R^2 0.967-0.986.
    c = compare(analysis.load_paper_sal())
    assert abs(c.fit.alpha - 4.246) <= 0.5
    assert abs(c.fit.beta - 1.090) <= 0.10
    assert c.fit.r2 >= 0.96
    assert c.loo is not None and c.loo.r2 >= 0.8
    assert c.table["error"].tolist() == pytest.approx(1 - c.table["accuracy"] / 100)


def test_compare_matches_hf_ids_and_reports_unmatched(tmp_path):
    sal = {"Qwen/Qwen2.5-7B": 0.2, "MISTRAL-7B": 0.06, "qwen2.5-0.5b": 0.06,
           "deepseek-math-7b": 0.11, "unknown-model": 0.3}
    acc_csv = tmp_path / "acc.csv"
    analysis.load_reference_accuracy().to_csv(acc_csv, index=False)
    with pytest.warns(UserWarning, match="unknown-model"):
        c = compare(sal, accuracy=acc_csv, accuracy_column="math500")
    assert c.unmatched == ["unknown-model"]
    assert sorted(c.table["model"]) == ["deepseek-math-7b", "mistral-7b", "qwen2.5-0.5b",
                                        "qwen2.5-7b"]
    assert c.table.set_index("model").loc["qwen2.5-7b", "accuracy"] == pytest.approx(78.2)
    with pytest.raises(ValueError, match="accuracy column"):
        compare(sal, accuracy_column="nope")


def test_figures_4_and_5_are_written(tmp_path):
    ref = analysis.load_paper_sal()
    c = compare(ref)
    for path in (
        plots.plot_sal_vs_accuracy(c, tmp_path / "fig4.png"),
        plots.plot_sal_scale_family(ref, tmp_path / "fig5.png"),
    ):
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_three_model_comparison_reports_without_a_leave_one_out_fit(tmp_path):
    from sal.pipeline.analyses.compare import write_compare_report

    three = dict(list(analysis.load_paper_sal().items())[:3])
    comp = compare(three)
    assert comp.loo is None
    figures = {"fig4": plots.plot_sal_vs_accuracy(comp, tmp_path / "fig4.png"),
               "fig5": plots.plot_sal_scale_family(three, tmp_path / "fig5.png")}
    text = write_compare_report(tmp_path / "report.md", comp, figures).read_text()
    assert "no leave-one-out fit (it needs 4 models)" in text and f"R^2 = {comp.fit.r2:.3f}" in text
