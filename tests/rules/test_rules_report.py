"""Summary text, parquet outputs and the rules config."""

import json

import numpy as np
import pandas as pd
import pytest

from sal.config.rules import RulesConfig
from sal.rules import count_rules, feature_counts_table, summarize_rules, write_rules_outputs
from sal.rules.outputs import probability_histogram


def test_summary_counts_arity_and_histogram():
    rules = pd.DataFrame(
        {
            "p1": [0, 0, 1, 1], "p2": [-1, 2, -1, 3], "q": [1, 1, 0, 0],
            "n_premise": [4, 4, 4, 4], "n_rule": [1, 1, 1, 1], "prob": [0.05, 0.15, 0.95, 1.0],
        }
    )
    text = summarize_rules(rules)
    assert "rules: 4  (1 premise: 2; 2 premises: 2)" in text
    hist = probability_histogram(rules["prob"].to_numpy())
    assert hist["n_rules"].tolist() == [1, 1, 0, 0, 0, 0, 0, 0, 0, 2]  # 1.0 lands in the last bin
    assert "[0.90, 1.00]" in text and "50.0%" in text


def test_feature_counts_hand_checked():
    a = np.array([[2, 0, 1], [4, 0, 0], [0, 0, 3]])
    table = feature_counts_table(a)
    assert table["n_samples_active"].tolist() == [2, 0, 2]
    assert table["mean_layer_count"].tolist() == [3.0, 0.0, 2.0]


def test_write_outputs_roundtrip(tmp_path):
    rng = np.random.default_rng(0)
    a = rng.integers(0, 4, size=(20, 6))
    rules = count_rules(a)
    cfg = RulesConfig(aggregate="any_token")
    paths = write_rules_outputs(str(tmp_path / "rules"), rules, a, cfg)
    pd.testing.assert_frame_equal(pd.read_parquet(paths["rules"]), rules)
    assert len(pd.read_parquet(paths["feature_counts"])) == 6
    assert json.loads((tmp_path / "rules" / "aggregation.json").read_text())["aggregate"] == "any_token"
    assert sorted(p.name for p in (tmp_path / "rules").iterdir()) == ["aggregation.json", "feature_counts.parquet", "rules.parquet"]


@pytest.mark.parametrize(
    "field,value",
    [("aggregate", "mean"), ("max_premises", 3), ("beta", -1.0), ("min_premise_count", 0), ("min_rule_count", 0),
     ("memory_budget_gb", 0.0), ("chunk_samples", 0), ("num_processes", 0), ("min_explanation_level", "No"),
     ("tau", float("nan"))],
)
def test_config_validate_names_the_field(field, value):
    RulesConfig()
    with pytest.raises(ValueError, match=f"rules.{field}="):
        RulesConfig(**{field: value})
