"""The training plan: the global batch split, the memory estimate (hand-computed, and against
the measured peak of real CPU training steps), the paper presets on 8 x A100, refusal."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
from hydra import compose, initialize_config_dir

from sal.config.crosscoder import CrosscoderConfig, OptimConfig
from sal.config.schema import register_configs, validate_config
from sal.config.trainer import TrainerConfig
from sal.training.plan import GIB, crosscoder_params, device_peak_gib, make_plan, memory_gib, refusal

ROOT = Path(__file__).resolve().parents[2]
PAPER_MODELS = ["qwen2.5-0.5b", "qwen2.5-1.5b", "qwen2.5-7b", "qwen2.5-14b", "mistral-7b", "llama-3.1-8b",
                "deepseek-math-7b"]
register_configs()


def _typed(overrides):
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        return validate_config(compose(config_name="train", overrides=list(overrides)))


def _model(d_model=4, n_params=100, dtype="float32"):
    return SimpleNamespace(d_model=d_model, n_params=n_params, dtype=dtype)


def test_memory_components_match_a_hand_count():
    # L=2, D=4, C=8: P = 2*2*4*8 + 2*8 + 2*4 = 152 parameters.
    assert crosscoder_params(2, 4, 8) == 152
    cc = CrosscoderConfig(n_features=8)
    opt = OptimConfig(batch_instances=2, tokens_per_instance=3, max_tokens_per_instance=5, docs_per_forward=2,
                      shuffle_buffer_tokens=10)
    mem = memory_gib(cc, opt, _model(), TrainerConfig(accelerator="cpu"), n_layers=2, micro_instances=2)
    B = 6  # tokens in the micro-batch
    assert mem["crosscoder_state"] * GIB == pytest.approx(16 * 152)
    assert mem["micro_batch"] * GIB == pytest.approx(3 * 2 * B * 8 * 4 + 8 * B * 2 * 4 * 4)
    assert mem["shuffle_buffer"] * GIB == pytest.approx(2 * 10 * 2 * 4 * 4)
    assert mem["subject_weights"] * GIB == pytest.approx(100 * 4)
    assert mem["subject_forward"] * GIB == pytest.approx(2 * 5 * 4 * (24 + 3 * 2) * 4)
    # A GPU in bf16-mixed: half-precision [L, B, C] tensors, autocast's weight copies, the
    # buffer in host memory, and the reserve a CUDA context takes.
    gpu = memory_gib(cc, opt, _model(dtype="bfloat16"), TrainerConfig(accelerator="gpu", precision="bf16-mixed"),
                     n_layers=2, micro_instances=2)
    assert gpu["crosscoder_state"] * GIB == pytest.approx(18 * 152)
    assert gpu["micro_batch"] * GIB == pytest.approx(3 * 2 * B * 8 * 2 + 8 * B * 2 * 4 * 4)
    assert "shuffle_buffer" not in gpu and gpu["host_buffer"] * GIB == pytest.approx(2 * 10 * 2 * 4 * 2)
    assert gpu["reserved"] == 1.0


def test_global_batch_splits_over_ranks_then_micro_batches():
    cc = CrosscoderConfig(n_features=8)
    trainer = TrainerConfig(accelerator="cpu", devices=2, strategy="ddp")
    plan = make_plan(cc, OptimConfig(batch_instances=8, tokens_per_instance=3, micro_batch_instances=2), _model(),
                     trainer, [0, 1], device_gib=1.0)
    assert (plan.world_size, plan.per_rank_instances, plan.micro_batch_instances, plan.accumulate_grad_batches) == \
        (2, 4, 2, 2)
    assert plan.tokens_per_step == 8 * 3 and plan.micro_batch_tokens == 2 * 3
    with pytest.raises(ValueError, match="multiple of 2"):
        make_plan(cc, OptimConfig(batch_instances=7), _model(), trainer, [0, 1], device_gib=1.0)
    with pytest.raises(ValueError, match="does not divide"):
        make_plan(cc, OptimConfig(batch_instances=8, micro_batch_instances=3), _model(), trainer, [0, 1],
                  device_gib=1.0)


def test_the_largest_micro_batch_that_fits_is_chosen():
    cc = CrosscoderConfig(n_features=4096)
    opt = OptimConfig(batch_instances=16, tokens_per_instance=100, shuffle_buffer_tokens=1000,
                      max_tokens_per_instance=100, docs_per_forward=1)
    trainer = TrainerConfig(accelerator="cpu")
    model = _model(d_model=256, n_params=1000)
    sizes = {m: sum(memory_gib(cc, opt, model, trainer, 8, m).values()) for m in (16, 8, 4, 2, 1)}
    # Room for 4 instances but not 8 (the forward of the subject model is tiny here, so the
    # peak is the sum of the parts).
    room = (sizes[4] + sizes[8]) / 2
    plan = make_plan(cc, opt, model, trainer, list(range(8)), device_gib=room)
    assert plan.fits and plan.micro_batch_instances == 4 and plan.accumulate_grad_batches == 4
    tight = make_plan(cc, opt, model, trainer, list(range(8)), device_gib=sizes[1] * 0.9)
    assert not tight.fits and tight.micro_batch_instances == 1
    message = refusal(tight)
    assert "crosscoder.n_features" in message and "plan=true" in message


def test_the_subject_forward_batch_is_halved_when_it_sets_the_peak():
    cc = CrosscoderConfig(n_features=64)
    opt = OptimConfig(batch_instances=4, tokens_per_instance=10, shuffle_buffer_tokens=1000,
                      max_tokens_per_instance=4096, docs_per_forward=8)
    trainer = TrainerConfig(accelerator="cpu")
    model = _model(d_model=512, n_params=1000)

    def peak(docs):
        return device_peak_gib(memory_gib(cc, dataclasses.replace(opt, docs_per_forward=docs), model, trainer, 8, 4))

    assert peak(8) > peak(4) > peak(2) > peak(1)  # the subject's forward is the peak at every size
    plan = make_plan(cc, opt, model, trainer, list(range(8)), device_gib=(peak(2) + peak(4)) / 2)
    assert plan.fits and plan.docs_per_forward == 2 and plan.micro_batch_instances == 4
    assert make_plan(cc, opt, model, trainer, list(range(8)), device_gib=peak(8) + 0.01).docs_per_forward == 8
    never = make_plan(cc, opt, model, trainer, list(range(8)), device_gib=peak(1) * 0.5)
    assert not never.fits and never.docs_per_forward == 1


@pytest.mark.parametrize("name", PAPER_MODELS)
def test_paper_models_fit_on_8_a100s_with_the_papers_global_batch(name):
    cfg = _typed([f"model={name}", "experiment=paper", "trainer=ddp_8xa100"])
    assert cfg.crosscoder.mse_reduction == "mean" and cfg.optim.batch_instances == 128
    plan = make_plan(cfg.crosscoder, cfg.optim, cfg.model, cfg.trainer, cfg.layers.indices)
    assert plan.fits and plan.device_memory_gib == 80.0 and plan.world_size == 8
    assert plan.per_rank_instances * plan.world_size == 128
    assert plan.micro_batch_instances * plan.accumulate_grad_batches == 16
    assert plan.tokens_per_step == 128 * 470
    # One 80 GB GPU: the same global batch by accumulation.
    single = _typed([f"model={name}", "experiment=paper", "trainer=ddp_8xa100", "trainer.devices=1"])
    one = make_plan(single.crosscoder, single.optim, single.model, single.trainer, single.layers.indices)
    assert one.fits and one.micro_batch_instances * one.accumulate_grad_batches == 128 and \
        one.accumulate_grad_batches > 1


def test_hub_models_default_to_the_mean_reduction_and_the_demo_keeps_sum():
    assert _typed(["model=qwen2.5-14b"]).crosscoder.mse_reduction == "mean"
    assert _typed(["model=qwen2.5-14b"]).crosscoder.sparsity_coef == 3e-3
    assert _typed(["experiment=demo"]).crosscoder.mse_reduction == "sum"


def test_plan_true_prints_writes_json_and_exits_without_loading_the_model(tmp_path):
    out = tmp_path / "plan.json"
    # A hub model with the hub unreachable: loading it would fail, so exit 0 means it never loaded.
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf"), "WANDB_MODE": "disabled"}
    proc = subprocess.run([sys.executable, "train.py", "model=qwen2.5-14b", "experiment=paper", "trainer=ddp_8xa100",
                           "plan=true", f"plan_out={out}", f"hydra.run.dir={tmp_path / 'run'}"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    plan = json.loads(out.read_text())
    for key in ("fits", "per_device_peak_gib", "device_memory_gib", "global_batch_instances", "micro_batch_instances",
                "accumulate_grad_batches", "tokens_per_step"):
        assert key in plan
    assert plan["fits"] is True and plan["global_batch_instances"] == 128 and plan["tokens_per_step"] == 60160
    assert "peak memory per device" in proc.stdout and "monitored layers: [0, 7, 14, 21, 27, 34, 41, 48]" in proc.stdout
    assert not (tmp_path / "hf").exists()


def test_a_run_that_cannot_fit_is_refused_before_the_model_loads(tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "disabled"}
    proc = subprocess.run([sys.executable, "train.py", "model=qwen2.5-14b", "experiment=paper", "trainer=ddp_8xa100",
                           "trainer.device_memory_gib=40", f"hydra.run.dir={tmp_path / 'run'}"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0
    assert "Training cannot fit" in proc.stderr and "crosscoder.n_features" in proc.stderr


# Three shapes where a different part dominates: the crosscoder's state, one micro-batch's
# activations, the shuffle buffer.
SHAPES = {
    "state": ["--layers", "4", "--d-model", "128", "--features", "32768", "--micro-instances", "2"],
    "micro_batch": ["--layers", "8", "--d-model", "64", "--features", "8192", "--micro-instances", "8",
                    "--tokens-per-instance", "128", "--buffer-tokens", "2048"],
    "buffer": ["--layers", "6", "--d-model", "256", "--features", "4096", "--micro-instances", "4",
               "--tokens-per-instance", "64", "--buffer-tokens", "65536"],
}


@pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="peak RSS reset needs Linux /proc")
def test_estimate_is_within_25_percent_of_the_measured_peak_at_three_shapes(tmp_path):
    procs = {name: subprocess.Popen([sys.executable, str(ROOT / "tests/training/_measure_peak.py"),
                                     str(tmp_path / name), *args], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                    text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
             for name, args in SHAPES.items()}
    for name, proc in procs.items():
        out = proc.communicate(timeout=300)[0]
        line = next((x for x in out.splitlines() if x.startswith("PEAK ")), None)
        assert line is not None, out[-3000:]
        result = json.loads(line[5:])
        dominant = max(("crosscoder_state", "micro_batch", "shuffle_buffer"), key=result["memory_gib"].get)
        assert dominant == {"state": "crosscoder_state", "buffer": "shuffle_buffer"}.get(name, name)
        assert result["measured_gib"] > 0.3  # large enough that the libraries' own allocations are noise
        print(f"{name}: estimate {result['estimate_gib']:.3f} GiB, measured {result['measured_gib']:.3f} GiB")
        assert result["estimate_gib"] == pytest.approx(result["measured_gib"], rel=0.25), (name, result)
