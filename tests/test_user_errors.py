"""A user's mistake ends the entrypoint with one readable message naming the fix, exit status
2 and no traceback, before any model loads; HYDRA_FULL_ERROR=1 still shows the traceback.

How fast each one fails is measured by benchmarks/user_errors_bench.py; here the time bound
is loose and only catches retry loops (transformers' hub retries, a judge tried item by item)."""

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
NO_RETRY_LOOP_S = 30


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _fails(script, *overrides, env=None, tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "offline", "HF_HOME": str(tmp_path / "hf"), **(env or {})}
    env.pop("HYDRA_FULL_ERROR", None)
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, str(ROOT / script), "logger=csv", f"paths.runs_root={tmp_path}/runs",
                           f"paths.cache_dir={tmp_path}/cache", *overrides], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120)
    elapsed = time.perf_counter() - t0
    assert proc.returncode == 2, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr and "Traceback" not in proc.stdout
    assert "Loading weights" not in proc.stderr + proc.stdout
    (message,) = [line for line in proc.stderr.splitlines() if ": error: " in line]
    assert elapsed < NO_RETRY_LOOP_S
    return message


def test_a_layer_past_the_model(tmp_path):
    message = _fails("train.py", "model=tiny-random", "layers=custom", "layers.indices=[0,99]", tmp_path=tmp_path)
    assert message.startswith("train.py: error: ") and "99" in message and "layers" in message


def test_a_value_outside_a_fields_choices(tmp_path):
    message = _fails("train.py", "crosscoder.arch=reluu", tmp_path=tmp_path)
    assert message == "train.py: error: crosscoder.arch='reluu': choose one of relu, topk."
    message = _fails("evaluate.py", "analysis.metric=delta_sal,gain", "-m", tmp_path=tmp_path)
    assert message == "evaluate.py: error: analysis.metric='gain': choose one of sal, delta_sal."


def test_a_negative_sparsity(tmp_path):
    message = _fails("train.py", "sparsity=-1", tmp_path=tmp_path)
    assert "sparsity_coef=-1.0 (the `sparsity=` override sets it) is negative" in message and "5e-3" in message


def test_a_hub_model_that_is_not_cached_with_the_hub_off(tmp_path):
    message = _fails("train.py", "model=qwen2.5-0.5b", tmp_path=tmp_path)
    assert "Qwen/Qwen2.5-0.5B" in message and "HF_HUB_OFFLINE" in message
    assert "model.source=local model.local_path=" in message  # the way out


def test_an_unreachable_hub(tmp_path):
    url = f"http://127.0.0.1:{_free_port()}"
    message = _fails("train.py", "model=qwen2.5-0.5b", env={"HF_HUB_OFFLINE": "0", "TRANSFORMERS_OFFLINE": "0", "HF_ENDPOINT": url},
                     tmp_path=tmp_path)
    assert f"cannot reach the Hugging Face hub at {url}" in message and "HF_HUB_OFFLINE=1" in message


def test_a_missing_judge_key_is_found_at_start_up(tmp_path):
    env = {"SAL_TEST_UNSET_KEY": ""}
    message = _fails("evaluate.py", "model=tiny-random", "judge=openai", "judge.api_key_env=SAL_TEST_UNSET_KEY",
                     env=env, tmp_path=tmp_path)
    assert "SAL_TEST_UNSET_KEY" in message and "judge.api_key_env" in message
    assert not (tmp_path / "runs" / "tiny-random" / "default" / "config").exists()  # before the stage ran


def test_an_unreachable_judge_server(tmp_path):
    url = f"http://127.0.0.1:{_free_port()}/v1"
    message = _fails("extract_rules.py", "model=tiny-random", "judge=openai", "judge.api_key_env=SAL_TEST_KEY",
                     f"judge.base_url={url}", env={"SAL_TEST_KEY": "sk-test-000"}, tmp_path=tmp_path)
    assert url in message and "refused" in message and "sk-test-000" not in message


def test_a_missing_earlier_stage(tmp_path):
    message = _fails("evaluate.py", "model=tiny-random", "judge=replay", "judge.replay_path=labels.csv",
                     tmp_path=tmp_path)
    assert "rules.parquet not found" in message and "python extract_rules.py" in message


def test_hydra_full_error_shows_the_traceback(tmp_path):
    env = {**os.environ, "HYDRA_FULL_ERROR": "1"}
    proc = subprocess.run([sys.executable, str(ROOT / "train.py"), "sparsity=-1", "logger=csv",
                           f"paths.runs_root={tmp_path}"], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode != 0 and "Traceback" in proc.stderr and "ConfigError" in proc.stderr


@pytest.mark.parametrize("override", ["judge.api_key_env=sk-abcdefghijklmnopqrstuvwx0123"])
def test_a_key_pasted_as_the_variable_name_is_refused_and_not_saved(tmp_path, override):
    message = _fails("evaluate.py", "model=tiny-random", "judge=openai", override, tmp_path=tmp_path)
    assert "api_key_env" in message and "sk-abcdefghijklmnopqrstuvwx0123" not in message
    for path in (tmp_path / "runs").rglob("*"):
        if path.is_file():
            assert "sk-abcdefghijklmnopqrstuvwx0123" not in path.read_text(errors="ignore"), path
