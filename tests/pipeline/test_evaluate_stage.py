import numpy as np
import pandas as pd
import pytest

from sal.pipeline.evaluate import enforce_min_rules, sample_rules


def _rules():
    rows = [(p1, -1, q) for p1 in range(6) for q in range(6) if p1 != q]
    rows += [(p1, p2, q) for p1 in range(6) for p2 in range(p1 + 1, 6) for q in range(6) if q not in (p1, p2)]
    df = pd.DataFrame(rows, columns=["p1", "p2", "q"])
    df["prob"] = np.linspace(0, 1, len(df))
    return df


def test_sample_is_uniform_per_arity_over_judgeable_rules_and_records_the_frame():
    rules = _rules()
    explained = {0, 1, 2, 3, 4}  # feature 5 has no explanation: its rules cannot be judged
    sample, frame = sample_rules(rules, explained, n_per_arity=7, seed=1)
    assert (sample.p2 < 0).sum() == 7 and (sample.p2 >= 0).sum() == 7
    used = set(sample.p1) | set(sample.q) | set(sample.p2[sample.p2 >= 0])
    assert 5 not in used
    assert frame["1"] == {"n_rules": 30, "n_judgeable": 20, "n_sampled": 7}
    assert frame["2"] == {"n_rules": 60, "n_judgeable": 30, "n_sampled": 7}
    again, _ = sample_rules(rules, explained, n_per_arity=7, seed=1)
    pd.testing.assert_frame_equal(sample, again)
    everything, frame = sample_rules(rules, explained, n_per_arity=1000, seed=0)
    assert len(everything) == 50 and frame["2"]["n_sampled"] == 30


def test_thin_categories_are_dropped_or_refused():
    probs = {"Strict": np.array([0.9, 0.95]), "Plausible": np.full(12, 0.5), "No": np.full(30, 0.1)}
    kept = enforce_min_rules(probs, 10, "drop")
    assert len(kept["Strict"]) == 0 and len(kept["Plausible"]) == 12 and len(kept["No"]) == 30
    with pytest.raises(ValueError, match=r"\{'Strict': 2\}.*evaluate.empty_category=drop"):
        enforce_min_rules(probs, 10, "error")
    assert enforce_min_rules(probs, 2, "error")["Strict"].tolist() == [0.9, 0.95]
