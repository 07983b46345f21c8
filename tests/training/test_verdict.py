"""The end-of-training verdict on the paper's sparsity regime."""

import pytest

from sal.training.summary import format_summary, regime_verdict


@pytest.mark.parametrize("nmse, feats, starts, knob", [
    (0.70, 25.0, "in the paper's regime", None),
    (0.70, 16.0, "in the paper's regime", None),      # 20 - 25%
    (0.55, 26.6, "at the paper's sparsity but not its reconstruction", None),
    (0.12, 1022.9, "denser than", "target_l0=25"),
    (0.90, 5.0, "sparser than", "lower the sparsity"),
])
def test_verdict_names_the_regime_and_the_knob(nmse, feats, starts, knob):
    verdict = regime_verdict({"nmse": nmse, "l0_features": feats})
    assert verdict.startswith(starts), verdict
    if knob:
        assert knob in verdict


def test_summary_reports_both_sparsity_figures():
    text = format_summary({"last_step": 9, "nmse": 0.7, "fvu": 1.1, "l0": 27.0, "l0_features": 26.0,
                           "dead_frac": 0.01})
    assert "L0 27.0 (feature, layer) pairs" in text and "26.0 distinct features per token" in text
    assert regime_verdict({}).startswith("no verdict")
