"""The judge's API key reaches no file a stage writes: run directory, Hydra's saved configs and
logs, W&B's offline folder, the judge's cache. evaluate.py runs as a user would, against the
fault server on 127.0.0.1 (tests/judge/fault_server.py), once with the right key (with faults
on the way) and once with a wrong one that the server's 401 echoes back."""

import os
import subprocess
import sys
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from tests.judge.fault_server import FaultServer  # noqa: E402

KEY = "sk-pipeline-KEY-5d1e08c7aa93"
WRONG = "sk-pipeline-WRONG-77b0e2f4c6d1"
KEY_ENV = "SAL_TEST_PIPELINE_JUDGE_KEY"
CATEGORIES = ("Strict", "Plausible", "No")


def _answer(prompt: str) -> str:
    category = CATEGORIES[sum(map(ord, prompt)) % 3]
    return f'<think>Checking.</think>\n<judgement> {{"Category": "{category}", "Relation/Intuition": "x"}} </judgement>'


def _finished_extract(run_dir: Path) -> None:
    """What extract_rules.py leaves for evaluate.py: explained features and their rules."""
    (run_dir / "features").mkdir(parents=True)
    (run_dir / "rules").mkdir()
    pd.DataFrame({"feature": range(8), "explanation": [f"the token pattern number {i}" for i in range(8)],
                  "decision": "Yes"}).to_parquet(run_dir / "features" / "explanations.parquet")
    rows = [(p, -1, q, 10, 3 + (p * q) % 5) for p in range(8) for q in range(8) if p != q]
    rules = pd.DataFrame(rows, columns=["p1", "p2", "q", "n_premise", "n_rule"])
    rules["prob"] = (rules.n_rule + 1) / (rules.n_premise + 2)
    rules.to_parquet(run_dir / "rules" / "rules.parquet")


def _evaluate(tmp_path: Path, base_url: str, key: str) -> subprocess.CompletedProcess:
    env = {**os.environ, KEY_ENV: key, "WANDB_MODE": "offline", "HF_HUB_OFFLINE": "1"}
    return subprocess.run(
        [sys.executable, str(ROOT / "evaluate.py"), "model=tiny-random", "judge=openai", f"judge.base_url={base_url}",
         f"judge.api_key_env={KEY_ENV}", "judge.model=fake-r1", "judge.backoff_base_s=0.01", "judge.backoff_max_s=0.05",
         "logger=wandb", f"paths.runs_root={tmp_path}/runs", f"paths.cache_dir={tmp_path}/cache",
         "evaluate.n_rules_per_arity=40", "evaluate.n_bootstrap=20", "evaluate.n_permutations=20",
         "evaluate.min_rules_per_category=2", "evaluate.empty_category=drop"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)


def _files_holding(root: Path, secret: str) -> list:
    return [p for p in root.rglob("*") if p.is_file() and secret.encode() in p.read_bytes()]


def test_the_key_is_in_no_file_and_a_401_echoing_it_is_redacted(tmp_path):
    run_dir = tmp_path / "runs" / "tiny-random" / "default"
    _finished_extract(run_dir)
    faults = lambda prompt, attempt: "500" if attempt == 0 and len(prompt) % 4 == 0 else None  # noqa: E731
    with FaultServer(answer=_answer, faults=faults, require_key=KEY, lifetime_s=240) as server:
        ok = _evaluate(tmp_path, server.base_url, KEY)
        assert ok.returncode == 0, ok.stdout[-2000:] + ok.stderr[-2000:]
        refused = _evaluate(tmp_path, server.base_url, WRONG)
    labelled = pd.read_parquet(run_dir / "evaluate" / "labelled_rules.parquet")
    assert (labelled.judge_status == "ok").all() and len(labelled) == 40
    assert any((run_dir / "wandb").rglob("*.wandb"))  # W&B's offline run is among the files searched
    assert refused.returncode == 2 and "Traceback" not in refused.stderr
    assert "401" in refused.stderr and "<redacted>" in refused.stderr
    for secret in (KEY, WRONG):
        assert secret not in ok.stdout + ok.stderr + refused.stdout + refused.stderr
        assert _files_holding(tmp_path, secret) == []
