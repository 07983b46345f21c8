"""Every stage logs to W&B (offline here): train, extract_rules and evaluate on the tiny random
model (judge labels replayed, a null twin for ΔSAL) and compare on the paper's values, each a
run named <owner>/<run_name>/<stage> in the group <owner>/<run_name> (a multirun's: its sweep
directory). The offline run files are read back (tests/wandb_offline.py) and must hold each
stage's keys, tables and images."""

import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from tests.pipeline.test_evaluate_stage import _judged_run  # noqa: E402
from tests.test_entrypoints import _run  # noqa: E402
from tests.wandb_offline import offline_runs  # noqa: E402

slow = pytest.mark.slow  # the four stages run once, in about a minute


@pytest.fixture(scope="module")
def stages(tmp_path_factory):
    """One offline W&B run per stage, by job type; the stages run once for the module."""
    root = tmp_path_factory.mktemp("wandb_stages")
    common = ["model=tiny-random", f"paths.runs_root={root}/runs", f"paths.cache_dir={root}/cache", "logger=wandb",
              "logger.wandb_mode=offline"]
    run_dir = root / "runs" / "tiny-random" / "default"
    _run("train.py", *common, cwd=root)
    _run("extract_rules.py", *common, cwd=root)
    evaluate = {"categories": ["Strict", "Plausible", "No"], "min_rules_per_category": 2, "bins": 20,
                "n_bootstrap": 20, "n_permutations": 20, "ci_level": 0.95, "seed": 0}
    rng = np.random.default_rng(1)
    _judged_run(run_dir.parent / "null_model", {c: rng.uniform(0, 1, 30) for c in evaluate["categories"]}, evaluate)
    _run("evaluate.py", *common, "judge=replay", f"judge.replay_path={_replay_labels(run_dir, root)}",
         "evaluate.n_rules_per_arity=30", "evaluate.n_bootstrap=20", "evaluate.n_permutations=20",
         "evaluate.min_rules_per_category=2", "evaluate.null_twin=null_model", cwd=root)
    _run("evaluate.py", "-m", "analysis=compare", *common, f"hydra.sweep.dir={root}/sweep", cwd=root)
    runs = offline_runs(root / "runs")
    assert sorted(r.job_type for r in runs) == ["compare", "evaluate", "extract", "train"]  # one run per stage
    return root, {r.job_type: r for r in runs}


def _replay_labels(run_dir: Path, root: Path) -> Path:
    """Every extracted rule labelled at random (seeded), so the replay judge answers any sample."""
    labels = pd.read_parquet(run_dir / "rules" / "rules.parquet")[["p1", "p2", "q"]]
    labels["category"] = np.random.default_rng(0).choice(["Strict", "Plausible", "No"], size=len(labels))
    labels["rationale"] = "replayed label"
    labels.to_csv(root / "labels.csv", index=False)
    return root / "labels.csv"


@slow
def test_each_stage_is_a_run_named_and_grouped_by_model_and_run_name(stages):
    root, runs = stages
    for stage in ("train", "extract", "evaluate"):
        assert (runs[stage].name, runs[stage].group, runs[stage].project) == (
            f"tiny-random/default/{stage}", "tiny-random/default", "sal")
        assert runs[stage].config["run_name"] == "default"
    assert runs["train"].notes.startswith("tiny-random-L0.1.2.3.4.5.6.7-")  # the descriptive name stays
    assert "train/loss" in runs["train"].summary  # training's scalars are as before
    # A multirun is grouped by its sweep directory; the job number tells its jobs apart.
    assert (runs["compare"].name, runs["compare"].group) == ("_analysis/default/job0/compare", f"{root}/sweep")


@slow
def test_extract_logs_table3_the_features_and_the_rules(stages):
    root, runs = stages
    s = runs["extract"].summary
    t3 = pd.read_json(root / "runs" / "tiny-random" / "default" / "features" / "table3.json", typ="series")
    assert s["features/dead_rate"] == t3["dead_rate"] and s["features/explainable_rate"] == t3["explainable_rate"]
    shares = t3["decision_shares"]
    assert s["features/decision_share/Yes"] == shares["Yes"]
    assert s["features/explainable_rate/Yes"] == pytest.approx(shares["Yes"])
    assert s["features/explainable_rate/Maybe"] == pytest.approx(t3["explainable_rate"])
    rules = pd.read_parquet(root / "runs" / "tiny-random" / "default" / "rules" / "rules.parquet")
    assert s["rules/n_rules"] == len(rules) and s["rules/n_rules_1_premise"] == int((rules.p2 < 0).sum())
    assert s["rules/prob"]["_type"] == "histogram" and sum(s["rules/prob"]["values"]) == len(rules)
    table = runs["extract"].table("features/table")
    assert table["columns"] == ["feature", "explanation", "verification", "n_activations", "n_documents",
                                "frequency", "top_spans"]
    assert len(table["data"]) == t3["n_sufficient"] and s["features/table_rows_left_out"] == 0
    row = dict(zip(table["columns"], table["data"][0]))
    assert row["explanation"] and row["verification"] in ("Yes", "Probably", "Maybe", "No", None)
    assert row["frequency"] == pytest.approx(row["n_activations"] / t3["n_tokens"])
    assert row["top_spans"].count("[[") == 5 and row["top_spans"].endswith("]]")


@slow
def test_evaluate_logs_sal_the_gain_over_the_null_twin_figures_and_the_judged_rules(stages):
    import json

    root, runs = stages
    run_dir = root / "runs" / "tiny-random" / "default"
    summary = json.loads((run_dir / "sal.json").read_text())
    s = runs["evaluate"].summary
    assert s["sal/bits"] == summary["sal"] and [s["sal/ci_low"], s["sal/ci_high"]] == summary["ci"]
    assert s["sal/p_value"] == summary["p_value"]
    assert s["sal/delta"] == summary["delta_sal"]["delta"] and s["sal/delta_p_value"] == summary["delta_sal"]["p_value"]
    assert {c: s[f"sal/count/{c}"] for c in summary["counts"]} == summary["counts"]
    assert sum(s[f"judge/label_count/{c}"] for c in ("Strict", "Plausible", "No")) == 60
    for key in ("figures/fig2_histograms", "figures/fig3_pairwise_jsd"):
        assert runs["evaluate"].image(key).stat().st_size > 0
    table = runs["evaluate"].table("judge/rules")
    assert table["columns"] == ["p1", "p2", "q", "P1", "P2", "C", "prob", "label", "rationale", "judge_status"]
    rows = [dict(zip(table["columns"], r)) for r in table["data"]]
    labelled = pd.read_parquet(run_dir / "evaluate" / "labelled_rules.parquet")
    explanations = pd.read_parquet(run_dir / "features" / "explanations.parquet").set_index("feature").explanation
    assert len(rows) == len(labelled) == 60
    one = next(r for r in rows if r["p2"] < 0)
    assert one["P1"] == explanations[one["p1"]] and one["C"] == explanations[one["q"]] and one["P2"] == ""
    two = next(r for r in rows if r["p2"] >= 0)
    assert two["P2"] == explanations[two["p2"]]
    assert {r["rationale"] for r in rows} == {"replayed label"}
    assert {r["label"] for r in rows} <= {"Strict", "Plausible", "No"}


@slow
def test_compare_logs_the_fit_loo_spearman_and_figures(stages):
    import json

    root, runs = stages
    compare = json.loads((root / "runs" / "_analysis" / "compare" / "default" / "compare" / "compare.json").read_text())
    s = runs["compare"].summary
    assert (s["compare/alpha"], s["compare/beta"], s["compare/r2"], s["compare/loo_r2"]) == (
        compare["alpha"], compare["beta"], compare["r2"], compare["loo_r2"])
    spearman = runs["compare"].table("compare/spearman")
    assert spearman["columns"][:3] == ["benchmark", "header", "rho_pct"]
    assert {r[0] for r in spearman["data"]} == set(compare["spearman"])
    models = runs["compare"].table("compare/models")
    assert "loo_error" in models["columns"] and len(models["data"]) == compare["n_models"]
    for key in ("figures/fig4_sal_vs_accuracy", "figures/fig5_scale_family"):
        assert runs["compare"].image(key).stat().st_size > 0


def test_a_broken_wandb_is_a_warning_and_the_run_is_still_finished(tmp_path, monkeypatch, caplog):
    from types import SimpleNamespace

    import wandb

    from sal import tracking
    from sal.config.logger import LoggerConfig

    cfg = SimpleNamespace(logger=LoggerConfig(wandb_mode="offline"), model=SimpleNamespace(name="m"), run_name="r")
    finished = []
    run = SimpleNamespace(log=lambda payload: None, finish=lambda: finished.append(True))
    monkeypatch.setattr(wandb, "init", lambda **kw: run)

    def broken_payload():
        raise KeyError("decision_shares")

    with caplog.at_level("WARNING", logger="sal.tracking"):
        assert tracking.log_stage(cfg, tmp_path, "extract", {}, broken_payload) is False
    assert "W&B logging of the extract stage failed (KeyError: 'decision_shares')" in caplog.text and finished

    def no_service(**kw):
        raise RuntimeError("wandb service did not start")

    monkeypatch.setattr(wandb, "init", no_service)
    with caplog.at_level("WARNING", logger="sal.tracking"):
        assert tracking.log_stage(cfg, tmp_path, "evaluate", {}, lambda: {"sal/bits": 0.1}) is False
    assert "evaluate stage failed (RuntimeError: wandb service did not start)" in caplog.text
    caplog.clear()
    off = SimpleNamespace(**{**vars(cfg), "logger": LoggerConfig(wandb=False)})
    with caplog.at_level("WARNING", logger="sal.tracking"):
        assert tracking.log_stage(off, tmp_path, "evaluate", {}, broken_payload) is False
    assert caplog.text == ""  # W&B off: the payload is never built, so nothing failed


def test_a_run_without_sal_logs_why_and_its_counts():
    from sal.tracking_tables import sal_metrics

    base = {"judge_label_counts": {"Strict": 0, "Plausible": 3, "No": 9}, "n_labelled": 12, "n_unlabelled": 1}
    logged = sal_metrics({**base, "sal": None, "not_computable": "only 9 rules"})
    assert logged == {"judge/label_count/Strict": 0, "judge/label_count/Plausible": 3, "judge/label_count/No": 9,
                      "judge/n_labelled": 12, "judge/n_unlabelled": 1, "sal/not_computable": "only 9 rules"}
    computed = {**base, "sal": 0.2, "ci": [0.1, 0.3], "p_value": 0.02, "counts": {"Plausible": 3, "No": 9},
                "pairwise": {"P-N": 0.2}, "delta_sal": {"delta": None, "not_computable": "twin has one category"}}
    logged = sal_metrics(computed)
    assert logged["sal/delta_not_computable"] == "twin has one category" and "sal/delta" not in logged
    assert logged["sal/count/No"] == 9 and logged["sal/jsd_P-N"] == 0.2
