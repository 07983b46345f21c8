"""Reruns on the tiny random model: the same settings redo nothing; one changed setting redoes
the step that reads it and every step after it, and nothing before; force=true redoes all.
"Redone" is read from each output's modification time."""

import json
import shutil

import numpy as np
import pandas as pd
import pytest

from sal.demo import run_stage

OUTPUTS = {
    "crosscoder": "crosscoder/config.json",
    "explanations": "features/explanations.parquet",
    "layer_counts": "rules/layer_counts_*.npz",
    "rules": "rules/rules.parquet",
    "labelled_rules": "evaluate/labelled_rules.parquet",
    "sal": "sal.json",
}
EXTRACT = ("explanations", "layer_counts", "rules")
EVALUATE = ("labelled_rules", "sal")


def _mtimes(run_dir) -> dict:
    out = {}
    for name, pattern in OUTPUTS.items():
        (path,) = run_dir.glob(pattern)
        out[name] = path.stat().st_mtime_ns
    return out


def _redone(before: dict, run_dir) -> set:
    now = _mtimes(run_dir)
    return {name for name in OUTPUTS if now[name] != before[name]}


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """One run through the three stages (replayed judge labels for evaluate)."""
    root = tmp_path_factory.mktemp("rerun")
    # One-premise rules only: the tiny model's 2-premise rules number millions.
    common = ["model=tiny-random", f"paths.runs_root={root}", f"paths.cache_dir={root}/cache", "logger=csv",
              "rules.max_premises=1"]
    run_stage("train.py", [*common, "run_name=base"])
    run_stage("extract_rules.py", [*common, "run_name=base"])
    rules = pd.read_parquet(root / "tiny-random" / "base" / "rules" / "rules.parquet")
    labels = rules[["p1", "p2", "q"]].copy()
    labels["category"] = np.random.default_rng(0).choice(["Strict", "Plausible", "No"], size=len(labels))
    labels["rationale"] = "test label"
    labels.to_csv(root / "labels.csv", index=False)
    evaluate = ["judge=replay", f"judge.replay_path={root / 'labels.csv'}", "evaluate.n_rules_per_arity=30",
                "evaluate.n_bootstrap=20", "evaluate.n_permutations=20", "evaluate.empty_category=drop",
                "evaluate.min_rules_per_category=2"]
    run_stage("evaluate.py", [*common, "run_name=base", *evaluate])
    return root, common, evaluate


@pytest.fixture
def run(finished, request):
    """A copy of the finished run under its own run_name: (run_dir, stage runner)."""
    root, common, evaluate = finished
    name = request.node.name.replace("[", "_").replace("]", "")
    run_dir = root / "tiny-random" / name
    shutil.copytree(root / "tiny-random" / "base", run_dir)  # copy2 keeps the modification times

    def stage(script, *overrides):
        extra = evaluate if script == "evaluate.py" else []
        run_stage(script, [*common, f"run_name={name}", *extra, *overrides])

    return run_dir, stage


def test_the_same_settings_redo_nothing(run, capsys):
    run_dir, stage = run
    before = _mtimes(run_dir)
    for script in ("train.py", "extract_rules.py", "evaluate.py"):
        stage(script)
    assert _redone(before, run_dir) == set()
    out = capsys.readouterr().out
    assert "crosscoder up to date" in out and "rules up to date" in out and "up to date in" in out


def test_a_training_setting_retrains_and_redoes_every_later_step(run, capsys):
    run_dir, stage = run
    before = _mtimes(run_dir)
    stage("train.py", "optim.max_steps=12")
    assert _redone(before, run_dir) == {"crosscoder"}
    assert json.loads((run_dir / "crosscoder" / "config.json").read_text())["global_step"] == 12
    captured = capsys.readouterr()
    log = captured.out + captured.err
    assert "crosscoder: recomputing: optim.max_steps: 20 -> 12" in log
    assert "discarding" in log and "training starts from step 0" in log  # the old run's checkpoints
    stage("extract_rules.py")
    assert _redone(before, run_dir) == {"crosscoder", *EXTRACT}
    stage("evaluate.py")
    assert _redone(before, run_dir) == set(OUTPUTS)


def test_a_rule_counting_setting_redoes_the_rules_and_evaluate_only(run, capsys):
    run_dir, stage = run
    before = _mtimes(run_dir)
    stage("extract_rules.py", "rules.min_rule_count=2")
    assert _redone(before, run_dir) == {"rules"}
    captured = capsys.readouterr()
    assert "rules: recomputing: rules.min_rule_count: 1 -> 2" in captured.out + captured.err
    stage("evaluate.py")  # without the override: it reads what extract_rules.py recorded
    assert _redone(before, run_dir) == {"rules", *EVALUATE}


def test_a_feature_setting_redoes_the_explanations_not_the_counts(run):
    run_dir, stage = run
    before = _mtimes(run_dir)
    stage("extract_rules.py", "interpret.min_activations=2")
    assert _redone(before, run_dir) == {"explanations", "rules"}


def test_a_histogram_setting_redoes_sal_only(run):
    run_dir, stage = run
    before = _mtimes(run_dir)
    stage("evaluate.py", "evaluate.bins=10")
    assert _redone(before, run_dir) == {"sal"}


def test_force_redoes_the_stage(run):
    run_dir, stage = run
    before = _mtimes(run_dir)
    stage("evaluate.py", "force=true")
    assert _redone(before, run_dir) == set(EVALUATE)
    stage("extract_rules.py", "force=true")
    assert _redone(before, run_dir) == {*EXTRACT, *EVALUATE}
