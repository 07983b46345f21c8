"""The three Hydra entrypoints end to end on the tiny random model (train -> extract_rules ->
evaluate), plus the analyses that need no model."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

ROOT = Path(__file__).resolve().parents[1]


def _run(script, *overrides, cwd=ROOT):
    env = dict(os.environ, HF_HUB_OFFLINE="1", WANDB_MODE="offline", PYTHONUNBUFFERED="1")
    proc = subprocess.run([sys.executable, str(ROOT / script), *overrides], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc.stdout


def _run_fails(script, *overrides, cwd=ROOT):
    env = dict(os.environ, HF_HUB_OFFLINE="1", WANDB_MODE="offline", PYTHONUNBUFFERED="1")
    proc = subprocess.run([sys.executable, str(ROOT / script), *overrides], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode != 0, proc.stdout[-3000:]
    return proc.stdout + proc.stderr


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    common = ["model=tiny-random", f"paths.runs_root={root}", f"paths.cache_dir={root}/cache", "logger=csv"]
    out = _run("train.py", *common)
    return root, common, out


def test_train_exports_a_crosscoder_and_logs_metrics(tiny_run):
    root, _, out = tiny_run
    run_dir = root / "tiny-random" / "default"
    cfg = json.loads((run_dir / "crosscoder" / "config.json").read_text())
    assert cfg["layers"] == [0, 1, 2, 3, 4, 5, 6, 7] and cfg["n_features"] == 256
    metrics = pd.concat(pd.read_csv(p) for p in (run_dir / "csv").rglob("metrics.csv"))
    for name in ["train/loss", "train/mse", "train/sparsity", "train/sparsity_coef", "train/lr", "train/nmse",
                 "train/fvu", "train/fvu/layer_0", "train/l0", "train/dead_frac", "train/tokens_per_s"]:
        assert name in metrics.columns, name
    assert "fvu" in out and (run_dir / "config" / "train.yaml").exists()


def test_later_stages_refuse_a_crosscoder_trained_on_other_data(tiny_run):
    root, common, _ = tiny_run
    run_dir = root / "tiny-random" / "default"
    out = _run_fails("extract_rules.py", *common, "data=paper")
    assert "data.name: trained with 'offline', this run has 'paper'" in out and "accept_mismatch=true" in out
    assert not (run_dir / "config" / "extract_rules.yaml").exists()  # refused before writing anything
    assert "Loading weights" not in out  # and before any model loads
    out = _run_fails("evaluate.py", *common, "data.max_questions=3")
    assert "data.max_questions: trained with" in out and "this run has 3" in out


def test_extract_then_evaluate_with_replayed_labels(tiny_run, tmp_path):
    root, common, _ = tiny_run
    out = _run("extract_rules.py", *common)
    run_dir = root / "tiny-random" / "default"
    rules = pd.read_parquet(run_dir / "rules" / "rules.parquet")
    assert list(rules.columns) == ["p1", "p2", "q", "n_premise", "n_rule", "prob"] and len(rules) > 0
    assert (run_dir / "features" / "explanations.parquet").exists() and "rules:" in out
    # Label every rule at random (seeded) so the replay judge can answer any sample.
    rng = np.random.default_rng(0)
    labels = rules[["p1", "p2", "q"]].copy()
    labels["category"] = rng.choice(["Strict", "Plausible", "No"], size=len(labels))
    labels["rationale"] = "test label"
    labels.to_csv(tmp_path / "labels.csv", index=False)
    # Human labels for 20 rules: the first 10 agree with the replayed judge, the rest do not.
    human = labels.head(20).copy()
    flip = {"Strict": "No", "Plausible": "Strict", "No": "Plausible"}
    human.loc[human.index[10:], "category"] = human.category.iloc[10:].map(flip)
    human.to_csv(tmp_path / "human.csv", index=False)
    out = _run("evaluate.py", *common, "judge=replay", f"judge.replay_path={tmp_path / 'labels.csv'}",
               "evaluate.n_rules_per_arity=50", "evaluate.n_bootstrap=50", "evaluate.n_permutations=50",
               f"evaluate.human_labels={tmp_path / 'human.csv'}")
    summary = json.loads((run_dir / "sal.json").read_text())
    # SAL recomputed from the judged sample by hand: equal-weight JSD (bits) of the three
    # categories' 20-bin histograms on [0, 1] (the last bin closed, as np.histogram's is).
    labelled = pd.read_parquet(run_dir / "evaluate" / "labelled_rules.parquet")
    ok = labelled[labelled.judge_status == "ok"]
    dists = [np.histogram(ok.prob[ok.category == c], bins=20, range=(0, 1))[0] for c in ("Strict", "Plausible", "No")]
    dists = [h / h.sum() for h in dists]
    entropy = lambda p: -np.sum(p[p > 0] * np.log2(p[p > 0]))  # noqa: E731
    assert summary["sal"] == pytest.approx(entropy(np.mean(dists, axis=0)) - np.mean([entropy(p) for p in dists]))
    # a permutation p-value is (1 + hits) / (1 + 50)
    assert summary["p_value"] * 51 == pytest.approx(round(summary["p_value"] * 51)) and summary["p_value"] >= 1 / 51
    assert sum(summary["counts"].values()) == 100
    assert summary["human_agreement"]["n"] == 20 and summary["human_agreement"]["raw_agreement"] == 0.5
    assert (run_dir / "evaluate" / "report.md").exists() and "SAL =" in out


def test_compare_on_the_papers_values_reproduces_its_fit(tmp_path):
    out = _run("evaluate.py", "analysis=compare", f"paths.runs_root={tmp_path}", "logger=csv")
    summary = json.loads((tmp_path / "_analysis" / "compare" / "default" / "compare" / "compare.json").read_text())
    fit = summary
    assert abs(fit["alpha"] - 4.246) <= 0.5 and abs(fit["beta"] - 1.090) <= 0.10 and fit["r2"] >= 0.96
    assert (tmp_path / "_analysis" / "compare" / "default" / "compare" / "fig4_sal_vs_accuracy.png").exists()
    assert "alpha" in out


def test_two_process_extract_rules_matches_one_process(tiny_run, tmp_path):
    import shutil

    root, common, _ = tiny_run
    src = root / "tiny-random" / "default"
    if not (src / "rules" / "rules.parquet").exists():
        _run("extract_rules.py", *common)
    copy = tmp_path / "ddp_run"
    shutil.copytree(src, copy, ignore=shutil.ignore_patterns("rules.parquet", "shards", "feature_counts.parquet"))
    _run("extract_rules.py", *common, f"run_dir={copy}", "trainer=ddp_cpu")
    one = pd.read_parquet(src / "rules" / "rules.parquet")
    two = pd.read_parquet(copy / "rules" / "rules.parquet")
    assert len(list((copy / "rules" / "shards").glob("rank*.npz"))) >= 2  # really sharded over 2 ranks
    pd.testing.assert_frame_equal(one, two)


def test_sweep_writes_one_directory_per_job(tmp_path):
    _run("train.py", "-m", "model=tiny-random", "sparsity=1e-3,5e-3", "logger=csv", "optim.max_steps=4",
               f"paths.cache_dir={tmp_path}/cache", f"hydra.sweep.dir={tmp_path}/multirun")
    jobs = sorted(p for p in (tmp_path / "multirun").iterdir() if p.is_dir())
    assert [j.name for j in jobs] == ["0_tiny-random_sp0.001", "1_tiny-random_sp0.005"]
    coefs = [json.loads((j / "crosscoder" / "config.json").read_text())["training"]["crosscoder"]["sparsity_coef"]
             for j in jobs]
    assert coefs == [1e-3, 5e-3]


def test_demo_runs_six_stages_in_one_process_and_reports_their_wall_times(tmp_path, monkeypatch, capsys):
    import hashlib

    from sal import demo
    from sal.judge.hf_local import HFLocalJudge

    def varied_scores(self, prompts, prefix, choices):  # a random model's labels are all alike
        return [[hashlib.sha256((p + c).encode()).digest()[0] / 255 for c in choices] for p in prompts]

    monkeypatch.setattr(HFLocalJudge, "_choice_logliks", varied_scores)
    monkeypatch.setenv("WANDB_MODE", "offline")
    argv = ["model=tiny-random", f"paths.runs_root={tmp_path}/runs", f"paths.cache_dir={tmp_path}/cache",
            "logger=csv", "judge.hf_model=tiny-random", "evaluate.n_rules_per_arity=10",
            "evaluate.min_rules_per_category=1", "evaluate.n_bootstrap=20", "evaluate.n_permutations=20"]
    assert demo.main(argv) == 0
    report = (tmp_path / "runs" / "demo_report.md").read_text()
    rows = [line for line in report.splitlines() if line.startswith("| ") and line.endswith(" s |")]
    stages = [(r.split("|")[1].strip(), r.split("|")[2].strip()) for r in rows]
    assert stages == list(demo.ORDER)
    # The null twin is evaluated before the model, whose sal.json then carries ΔSAL.
    assert [s for s in stages if s[1] == "evaluate.py"] == [(demo.NULL, "evaluate.py"), (demo.MODEL, "evaluate.py")]
    model_summary = json.loads((tmp_path / "runs" / "tiny-random" / "default" / "sal.json").read_text())
    assert model_summary["delta_sal"]["null_run_dir"] == str(tmp_path / "runs" / "tiny-random" / "null_model")
    assert "| **ΔSAL (model − null twin)** |" in report
    assert "| **total**" in report and "CPU capability" in report
    for run in ("default", "null_model"):
        run_dir = tmp_path / "runs" / "tiny-random" / run
        assert (run_dir / "sal.json").exists()
        # each stage kept its own Hydra log file, as when run as a command
        assert all((run_dir / f"{s}.log").exists() for s in ("train", "extract_rules", "evaluate"))
        m = json.loads((run_dir / "crosscoder" / "config.json").read_text())["final_metrics"]
        assert (f"- dictionary: nmse {m['nmse']:.3f}, {m['l0_features']:.1f} distinct features per token, "
                f"{m['l0']:.1f} (feature, layer) pairs per token") in report
    assert "Wall time per stage" in capsys.readouterr().out
