import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from _train_tiny import tiny_llama, tiny_texts

from sal.config.crosscoder import CrosscoderConfig, OptimConfig
from sal.config.trainer import TrainerConfig
from sal.crosscoder import Crosscoder

SCRIPT = Path(__file__).with_name("_train_tiny.py")
LAYERS = [0, 2, 4]


def _metrics(run_dir: Path, version: int = 0) -> list[dict]:
    with open(run_dir / "csv" / f"version_{version}" / "metrics.csv") as f:
        return list(csv.DictReader(f))


def _step_of(ckpt: Path) -> int:
    return int(torch.load(ckpt, map_location="cpu", weights_only=False)["global_step"])


@pytest.mark.parametrize("arch, precision", [("relu", "32-true"), ("topk", "bf16-mixed")])
def test_training_logs_every_metric_every_step_and_exports(tmp_path, arch, precision):
    from sal.training.run import train_crosscoder

    model, tok = tiny_llama()
    cc = CrosscoderConfig(arch=arch, n_features=128, k=8, aux_k=16, dead_window_tokens=256)
    opt = OptimConfig(max_steps=40, batch_instances=4, tokens_per_instance=32, max_tokens_per_instance=48,
                      docs_per_forward=4, shuffle_buffer_tokens=512, checkpoint_every_n_steps=20, lr=2e-3)
    tcfg = TrainerConfig(precision=precision, enable_progress_bar=False)  # bf16: fused AdamW + clipping + AMP
    result = train_crosscoder(cc, opt, tcfg, model, tok, tiny_texts(48), LAYERS, tmp_path, model_name="tiny")
    rows = _metrics(tmp_path)
    assert [int(r["step"]) for r in rows] == list(range(40))
    names = {"train/loss", "train/mse", "train/sparsity", "train/sparsity_coef", "train/lr", "train/nmse",
             "train/fvu", "train/l0", "train/dead_frac", "train/tokens_per_s", "train/grad_norm"}
    names |= {f"train/{m}/layer_{i}" for m in ("fvu", "l0") for i in range(len(LAYERS))}
    assert names <= set(rows[0])
    assert all(r[n] != "" for r in rows for n in names)
    fvu = [float(r["train/fvu"]) for r in rows]
    assert sum(fvu[-5:]) / 5 < 0.8 * sum(fvu[:5]) / 5  # it learns
    lrs = [float(r["train/lr"]) for r in rows]
    assert lrs[0] == pytest.approx(2e-3) and lrs[36] == pytest.approx(2e-3 * 4 / 8, rel=1e-5)  # cool-down
    coefs = [float(r["train/sparsity_coef"]) for r in rows]
    if arch == "relu":
        assert coefs[0] == 0.0 and coefs[4] == pytest.approx(2.5e-3, rel=1e-5) and coefs[-1] == pytest.approx(5e-3)
    else:
        assert all(float(r["train/l0"]) <= 8 * 1.5 for r in rows)  # BatchTopK: k per token on average
    # the export: weights + config that later stages load
    back = Crosscoder.from_pretrained(result.export_dir)
    assert back.arch == arch and back.n_layers == 3 and back.n_features == 128
    cfg = Crosscoder.load_config(result.export_dir)
    assert cfg["layers"] == LAYERS and cfg["complete"] and cfg["global_step"] == 40
    assert cfg["training"]["optim"]["max_steps"] == 40 and cfg["subject_model"]["name"] == "tiny"
    assert bool(back.scales_fitted) and back.act_scale.ne(1).all()
    assert set(result.summary) >= {"nmse", "fvu", "l0", "dead_frac"}
    # re-running a finished run is a no-op: no training, no new log version
    again = train_crosscoder(cc, opt, tcfg, model, tok, tiny_texts(48), LAYERS, tmp_path, model_name="tiny")
    assert again.global_step == 40 and again.summary["fvu"] == pytest.approx(result.summary["fvu"])
    assert not (tmp_path / "csv" / "version_1").exists()


def test_metrics_every_n_steps_keep_the_first_and_the_last_twenty(tmp_path):
    """With trainer.log_every_n_steps=k, the loggers get every k-th step; metrics are also
    computed on the first step and the last 20 (the summary's window), and nowhere else."""
    from sal.training.run import train_crosscoder

    model, tok = tiny_llama()
    cc = CrosscoderConfig(n_features=64, dead_window_tokens=256)
    opt = OptimConfig(max_steps=50, batch_instances=2, tokens_per_instance=32, max_tokens_per_instance=48,
                      docs_per_forward=4, shuffle_buffer_tokens=256, checkpoint_every_n_steps=50)
    tcfg = TrainerConfig(enable_progress_bar=False, log_every_n_steps=10)
    result = train_crosscoder(cc, opt, tcfg, model, tok, tiny_texts(24), LAYERS, tmp_path, model_name="tiny")
    steps = [int(r["step"]) for r in _metrics(tmp_path) if r.get("train/fvu")]
    assert steps == [9, 19, 29, 39, 49]
    assert result.summary["last_step"] == 49 and result.summary["first_step"] == 0
    tps = [float(r["train/tokens_per_s"]) for r in _metrics(tmp_path) if r.get("train/tokens_per_s")]
    assert min(tps) > 0 and max(tps) / min(tps) < 20  # skipped steps counted in the rate, not lost


def _run(run_dir, *extra, **popen):
    cmd = [sys.executable, str(SCRIPT), str(run_dir), *extra]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, **popen)


def test_resume_after_kill_continues_from_the_checkpoint_and_ends_at_max_steps(tmp_path):
    run_dir = tmp_path / "run"
    last = run_dir / "checkpoints" / "last.ckpt"
    proc = _run(run_dir, "--max-steps", "30", "--ckpt-every", "5", "--step-sleep", "0.25")
    deadline = time.time() + 120
    while not last.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.1)
    assert last.exists(), proc.communicate()[0] if proc.poll() is not None else "no checkpoint in time"
    time.sleep(0.6)
    proc.send_signal(signal.SIGKILL)  # no cleanup, no final checkpoint
    proc.wait()
    killed_at = _step_of(last)
    assert 0 < killed_at < 30

    out, _ = _run(run_dir, "--max-steps", "30", "--ckpt-every", "5").communicate(timeout=180)
    assert f"RESULT resumed_from={killed_at} global_step=30" in out, out[-3000:]
    assert _step_of(last) == 30
    second = _metrics(run_dir, version=1)
    assert int(second[0]["step"]) == killed_at and int(second[-1]["step"]) == 29
    assert Crosscoder.load_config(run_dir / "crosscoder")["global_step"] == 30


def test_two_process_cpu_ddp_ends_with_identical_weights_on_both_ranks(tmp_path):
    from safetensors.torch import load_file

    out, _ = _run(tmp_path, "--max-steps", "6", "--devices", "2", "--strategy", "ddp",
                  "--dump-weights").communicate(timeout=240)
    assert out.count("RESULT resumed_from=None global_step=6") == 2, out[-3000:]
    r0, r1 = (load_file(str(tmp_path / f"rank{r}.safetensors")) for r in range(2))
    assert r0.keys() == r1.keys()
    for k in r0:
        assert torch.equal(r0[k], r1[k]), k
    init = Crosscoder(3, 32, 128)
    assert not torch.equal(r0["W_dec"], init.W_dec.detach())  # they trained (same seed, same init)
    assert (tmp_path / "rank1.json").read_text().count('"world_size": 2') == 1


def test_global_batch_is_split_over_a_cpu_ddp_world_of_two_with_accumulation(tmp_path):
    # batch_instances=4 is the global batch: 2 per rank, fed as 2 micro-batches of 1 instance
    # (32 tokens) accumulated into each optimiser step of 4 * 32 = 128 tokens.
    out, _ = _run(tmp_path, "--max-steps", "3", "--devices", "2", "--strategy", "ddp", "--micro-batch", "1",
                  "--dump-weights").communicate(timeout=240)
    assert out.count("RESULT resumed_from=None global_step=3") == 2, out[-3000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    for info in ranks:
        assert info["world_size"] == 2 and info["accumulate_grad_batches"] == 2
        assert info["micro_batch_tokens"] == [32] * 6  # 3 steps x 2 micro-batches
    assert ranks[0]["summary"]["tokens_per_step"] == 128
    from safetensors.torch import load_file

    r0, r1 = (load_file(str(tmp_path / f"rank{r}.safetensors")) for r in range(2))
    assert all(torch.equal(r0[k], r1[k]) for k in r0)
