"""analysis=robustness end to end on tiny-random: Hydra multiruns over the crosscoder seed
(each beside its null twin) and over C, then the seed table, the spread and the sensitivity
table, checked against each run's own sal.json and judged sample."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from sal import metrics
from sal.pipeline.analyses.judged_sample import judged_probs

ROOT = Path(__file__).resolve().parents[2]
N_FEATURES = 256  # tiny-random's dictionary; the C sweep adds 64


@pytest.fixture(scope="module")
def robustness_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("robust")
    # Replay labels for every one-premise rule (hashed categories: the judge is not under test).
    p1, q = np.meshgrid(np.arange(N_FEATURES), np.arange(N_FEATURES), indexing="ij")
    keep = p1 != q
    labels = pd.DataFrame({"p1": p1[keep], "p2": -1, "q": q[keep]})
    labels["category"] = np.array(["Strict", "Plausible", "No"])[(labels.p1 * 7 + labels.q * 3) % 3]
    labels["rationale"] = "test label"
    # The same judge explains and verifies every feature (the overrides reach all three stages).
    features = pd.DataFrame({"feature": np.arange(N_FEATURES), "decision": "Yes"})
    features["explanation"] = [f"feature {f}" for f in features.feature]
    with open(root / "labels.jsonl", "w") as f:
        for frame in (labels, features):
            f.write(frame.to_json(orient="records", lines=True))
    overrides = ["analysis=robustness", "model=tiny-random", "logger=csv", f"paths.runs_root={root}/runs",
                 f"paths.cache_dir={root}/cache", "rules.max_premises=1", "optim.max_steps=10", "judge=replay",
                 f"judge.replay_path={root / 'labels.jsonl'}", "evaluate.n_rules_per_arity=60",
                 "evaluate.min_rules_per_category=5", "evaluate.n_bootstrap=50", "evaluate.n_permutations=50",
                 "evaluate.empty_category=drop", "analysis.robustness.seeds=[0,1]", "analysis.robustness.target_l0=[20]",
                 "analysis.robustness.n_features=[64]", "analysis.robustness.bins=[10,20]",
                 "analysis.robustness.min_premise_counts=[1,3]"]
    env = dict(os.environ, HF_HUB_OFFLINE="1", WANDB_MODE="offline", PYTHONUNBUFFERED="1")
    proc = subprocess.run([sys.executable, str(ROOT / "evaluate.py"), *overrides], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    return root / "runs" / "tiny-random" / "robustness-default", proc.stdout


def test_every_seed_and_setting_is_a_full_run_beside_its_null_twin(robustness_run):
    out, _ = robustness_run
    for job in ("seed0", "seed1", "C64", "l0_20.0"):
        model, null = (json.loads((out / "runs" / name / "sal.json").read_text()) for name in (job, f"{job}_null"))
        # tiny-random is itself random; its twin differs in control=null_twin's settings only
        assert null["config"]["data"]["responses_from"] == "pretrained" and null["config"]["run_name"] == "null_model"
        assert model["delta_sal"]["null_run_dir"] == str(out / "runs" / f"{job}_null")
        # ... so its null twin is the same network with the same dictionary seed: the same
        # rules, the same judged sample, ΔSAL exactly 0 (an end-to-end check of the pairing).
        assert model["delta_sal"]["delta"] == 0 and model["sal"] == null["sal"]
    configs = [json.loads((out / "runs" / job / "crosscoder" / "config.json").read_text())["training"]["crosscoder"]
               for job in ("seed0", "seed1", "C64")]
    assert [c["seed"] for c in configs] == [0, 1, 0] and [c["n_features"] for c in configs] == [256, 256, 64]


def test_seed_table_and_spread_match_the_runs(robustness_run):
    out, stdout = robustness_run
    summary = json.loads((out / "robustness.json").read_text())
    seeds = pd.read_csv(out / "seeds.csv")
    runs = [json.loads((out / "runs" / f"seed{k}" / "sal.json").read_text()) for k in (0, 1)]
    assert seeds.sal.tolist() == pytest.approx([r["sal"] for r in runs])
    assert seeds.delta.tolist() == pytest.approx([r["delta_sal"]["delta"] for r in runs])
    spread = summary["spread"]["sal"]
    assert spread["mean"] == pytest.approx(np.mean([r["sal"] for r in runs]))
    assert spread["seed_var"] == pytest.approx(np.var([r["sal"] for r in runs], ddof=1))
    assert spread["dominant"] in stdout and (out / "robustness.png").stat().st_size > 0


def test_sensitivity_rows_recompute_from_the_judged_samples(robustness_run):
    out, _ = robustness_run
    table = pd.read_csv(out / "sensitivity.csv")
    ev = json.loads((out / "runs" / "seed0" / "sal.json").read_text())["config"]["evaluate"]
    model = [judged_probs(out / "runs" / f"seed{k}", ev) for k in (0, 1)]
    null = [judged_probs(out / "runs" / f"seed{k}_null", ev) for k in (0, 1)]
    for b in (10, 20):
        row = table[(table.factor == "bins") & (table.value == b)].iloc[0]
        sal = [metrics.soundness_aware_level({k: v for k, v in p.items() if len(v)}, b) for p in model]
        null_sal = [metrics.soundness_aware_level({k: v for k, v in p.items() if len(v)}, b) for p in null]
        assert row.sal_mean == pytest.approx(np.mean(sal)) and row.sal_sd == pytest.approx(np.std(sal, ddof=1))
        assert row.delta_mean == pytest.approx(np.mean(np.subtract(sal, null_sal)))
    floor = table[(table.factor == "min_premise_count") & (table.value == 1)].iloc[0]
    assert "extraction floor" in floor.note
    c_rows = table[table.factor == "n_features"].set_index("value")
    assert sorted(c_rows.index) == [64, 256] and c_rows.loc[256, "note"] == "base (all seeds)"
    assert sorted(table[table.factor == "target_l0"].value) == [20.0, 25.0]
    c64 = judged_probs(out / "runs" / "C64", ev)
    assert c_rows.loc[64, "sal_mean"] == pytest.approx(
        metrics.soundness_aware_level({k: v for k, v in c64.items() if len(v)}, ev["bins"]))
