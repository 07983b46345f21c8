import numpy as np
import pandas as pd
import pytest

from sal.pipeline.analyses.judged_sample import enforce_min_rules
from sal.pipeline.analyses.single import sample_rules


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


def test_too_few_categories_is_named_with_the_features_behind_it():
    from sal.pipeline.analyses.single import not_computable_reason

    rules = _rules()
    frame = {"1": {"n_rules": 20, "n_judgeable": 12, "n_sampled": 12}, "2": {"n_rules": 30, "n_judgeable": 8, "n_sampled": 8}}
    one_left = {"Strict": np.array([]), "Plausible": np.array([]), "No": np.full(20, 0.1)}
    reason = not_computable_reason(one_left, 20, rules, {1, 2, 3}, frame)
    assert "{'No': 20}" in reason and "3 explained features" in reason and "20 judgeable" in reason
    two_left = dict(one_left, Plausible=np.full(20, 0.5))
    assert not_computable_reason(two_left, 20, rules, {1, 2, 3}, frame) is None


def test_the_demo_report_shows_a_run_without_sal(tmp_path):
    import json

    from sal.demo_report import write_demo_report

    done, empty = tmp_path / "a", tmp_path / "b"
    for d in (done, empty):
        d.mkdir()
    (done / "sal.json").write_text(json.dumps({
        "sal": 0.25, "ci": [0.2, 0.3], "p_value": 0.01, "counts": {"Plausible": 30, "No": 40}, "bins": 20,
        "pairwise": {"P-N": 0.25}, "null_mean": 0.03}))
    (empty / "sal.json").write_text(json.dumps({"sal": None, "not_computable": "only 9 rules",
                                                "judge_label_counts": {"No": 9}}))
    report = write_demo_report(tmp_path / "r.md", {"subject": done, "null": empty}).read_text()
    assert "| subject | 0.2500 | [0.2000, 0.3000] | 0.0100 |" in report
    assert "| null | not computable | — | — | {'No': 9} |" in report
    assert "**SAL not computable**: only 9 rules" in report


def _judged_run(run_dir, probs_by_category, evaluate):
    import json

    import pandas as pd

    rows = [(c, p, "ok") for c, ps in probs_by_category.items() for p in ps] + [("No", 0.5, "failed")]
    (run_dir / "evaluate").mkdir(parents=True)
    pd.DataFrame(rows, columns=["category", "prob", "judge_status"]).to_parquet(run_dir / "evaluate" /
                                                                                "labelled_rules.parquet")
    (run_dir / "sal.json").write_text(json.dumps({"sal": 0.1, "ci": [0.0, 0.2], "p_value": 0.5, "counts": {},
                                                  "bins": 20, "pairwise": {}, "null_mean": 0.0,
                                                  "config": {"evaluate": evaluate}}))


def test_the_demo_report_opens_with_the_gain_over_the_null_twin(tmp_path):
    from sal import metrics
    from sal.demo_report import write_demo_report

    rng = np.random.default_rng(0)
    model = {"Strict": rng.beta(8, 2, 40), "Plausible": rng.beta(5, 5, 40), "No": rng.beta(2, 8, 40)}
    null = {"Strict": rng.beta(4, 4, 3), "Plausible": rng.beta(4, 4, 40), "No": rng.beta(4, 4, 40)}
    evaluate = {"categories": ["Strict", "Plausible", "No"], "min_rules_per_category": 5, "bins": 10,
                "n_bootstrap": 100, "n_permutations": 100, "ci_level": 0.9, "seed": 0}
    _judged_run(tmp_path / "m", model, evaluate)
    _judged_run(tmp_path / "n", null, evaluate)
    report = write_demo_report(tmp_path / "r.md", {"model": tmp_path / "m", "null": tmp_path / "n"},
                               null_twin=("model", "null")).read_text()
    row = report.splitlines()[report.splitlines().index("|---|---|---|---|---|") + 1]
    # The null's 3 Strict rules fall under min_rules_per_category: its SAL is over 2 categories.
    expected = metrics.soundness_aware_level(model, 10) - metrics.soundness_aware_level(
        {"Plausible": null["Plausible"], "No": null["No"]}, 10)
    assert row.startswith(f"| **ΔSAL (model − null twin)** | **{expected:.4f}** |")
    assert "0.0099 (one-sided)" in row  # 1 / 101: no permutation reaches a gain this large


def test_compare_leaves_out_runs_without_sal(tmp_path, caplog):
    import json
    from types import SimpleNamespace

    from sal.pipeline.analyses.compare import collect_sal

    for name, sal in (("m1", 0.3), ("m2", None)):
        d = tmp_path / name
        d.mkdir()
        (d / "sal.json").write_text(json.dumps({"model": name, "init": "pretrained", "sal": sal,
                                                "not_computable": "too few rules"}))
    cfg = SimpleNamespace(analysis=SimpleNamespace(run_dirs=[str(tmp_path / "m1"), str(tmp_path / "m2")],
                                                   multirun_dir=None, sal_csv=None, sal_source=None, metric="sal"))
    with caplog.at_level("WARNING", logger="sal"):
        assert collect_sal(cfg) == {"m1": 0.3}
    assert "too few rules" in caplog.text


def test_compare_can_rank_by_the_gain_over_the_null_twin(tmp_path):
    import json
    from types import SimpleNamespace

    from sal.errors import MissingInputError
    from sal.pipeline.analyses.compare import collect_sal

    for name, sal, delta in (("m1", 0.3, 0.2), ("m2", 0.4, None)):
        d = tmp_path / name
        d.mkdir()
        summary = {"model": name, "init": "pretrained", "sal": sal}
        if delta is not None:
            summary["delta_sal"] = {"delta": delta, "ci": [0.1, 0.3], "p_value": 0.01}
        (d / "sal.json").write_text(json.dumps(summary))
    analysis = SimpleNamespace(run_dirs=[str(tmp_path / "m1")], multirun_dir=None, sal_csv=None, metric="delta_sal")
    assert collect_sal(SimpleNamespace(analysis=analysis)) == {"m1": 0.2}
    analysis.metric = "sal"
    assert collect_sal(SimpleNamespace(analysis=analysis)) == {"m1": 0.3}
    analysis.run_dirs.append(str(tmp_path / "m2"))
    analysis.metric = "delta_sal"
    with pytest.raises(MissingInputError, match=r"m2/sal.json has no ΔSAL: evaluate that run with evaluate.null_twin"):
        collect_sal(SimpleNamespace(analysis=analysis))


def _cfg_with_twin(null_twin):
    from sal.config.schema import SALConfig

    cfg = SALConfig()
    cfg.evaluate.null_twin = null_twin
    return cfg


def test_the_null_twin_is_named_beside_the_run_or_by_path_and_must_be_evaluated(tmp_path):
    from sal.errors import ConfigError, MissingInputError
    from sal.pipeline.analyses.single import check_null_twin
    from sal.pipeline.steps import null_twin_dir

    run_dir = tmp_path / "model" / "default"
    assert null_twin_dir(_cfg_with_twin(None), run_dir) is None
    assert null_twin_dir(_cfg_with_twin("null_model"), run_dir) == tmp_path / "model" / "null_model"
    assert null_twin_dir(_cfg_with_twin(str(tmp_path / "x" / "twin")), run_dir) == tmp_path / "x" / "twin"
    with pytest.raises(MissingInputError, match=r"evaluate the null twin first.*control=null_twin"):
        check_null_twin(_cfg_with_twin("null_model"), run_dir)
    with pytest.raises(ConfigError, match="names this run itself"):
        check_null_twin(_cfg_with_twin("default"), run_dir)


def test_the_sal_step_is_stale_when_the_null_twin_is_evaluated_again(tmp_path):
    import json

    from sal.pipeline.steps import sal_step

    run_dir, twin = tmp_path / "default", tmp_path / "null_model"
    twin.mkdir()
    (twin / "sal.json").write_text("{}")
    (twin / "sal.fingerprint.json").write_text(json.dumps({"digest": "first"}))
    cfg = _cfg_with_twin("null_model")
    first = sal_step(cfg, run_dir).digest
    assert sal_step(_cfg_with_twin(None), run_dir).digest != first
    (twin / "sal.fingerprint.json").write_text(json.dumps({"digest": "second"}))
    assert sal_step(cfg, run_dir).digest != first


def test_every_analysis_choice_has_its_function():
    from pathlib import Path

    from sal.pipeline.evaluate import ANALYSES

    choices = {p.stem for p in (Path(__file__).resolve().parents[2] / "conf" / "analysis").glob("*.yaml")}
    assert set(ANALYSES) == choices
