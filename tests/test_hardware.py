"""dtype=auto: the hardware picks the precision (bf16 only where it is native), an explicit
dtype wins, and the run's saved config records the choice and the facts behind it."""

from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir

from sal import hardware
from sal.config.schema import register_configs, validate_config
from sal.pipeline.common import resolved_container

ROOT = Path(__file__).resolve().parents[1]
register_configs()


def _compose(overrides=()):
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        return compose(config_name="evaluate", overrides=["judge=hf_local", *overrides])


@pytest.fixture
def cpu(monkeypatch):
    """Fake the probes: a CPU-only machine whose bf16 support the test chooses."""
    def make(native_bf16: bool):
        monkeypatch.setattr(hardware, "native_bf16_cpu", lambda: native_bf16)
        monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    return make


@pytest.mark.parametrize("native_bf16, want", [(False, "float32"), (True, "bfloat16")])
def test_auto_follows_the_cpus_bf16_support(cpu, native_bf16, want):
    cpu(native_bf16)
    cfg = _compose(["model=qwen2.5-0.5b"])
    assert cfg.model.dtype == "auto" and cfg.judge.hf_dtype == "auto"  # hub models ask for auto
    typed = validate_config(cfg)
    assert (typed.model.dtype, typed.judge.hf_dtype) == (want, want)


@pytest.mark.parametrize("native_bf16", [False, True])
def test_the_offline_demo_runs_in_float32_on_every_cpu(cpu, native_bf16):
    # bf16 on a native-bf16 CPU sampled other responses and left the null twin too few rules
    cpu(native_bf16)
    typed = validate_config(_compose())
    assert (typed.model.dtype, typed.judge.hf_dtype) == ("float32", "float32")


def test_auto_is_bf16_on_a_gpu(monkeypatch):
    monkeypatch.setattr(hardware, "native_bf16_cpu", lambda: False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert hardware.resolve_dtype("auto", "auto") == "bfloat16"
    assert hardware.resolve_dtype("auto", "cuda:1") == "bfloat16"
    assert hardware.resolve_dtype("auto", "cpu") == "float32"  # a CPU device on a GPU machine


@pytest.mark.parametrize("native_bf16", [False, True])
def test_an_explicit_dtype_wins(cpu, native_bf16):
    cpu(native_bf16)
    typed = validate_config(_compose(["model.dtype=bfloat16", "judge.hf_dtype=float16"]))
    assert (typed.model.dtype, typed.judge.hf_dtype) == ("bfloat16", "float16")


def test_saved_config_records_the_resolved_dtype_and_the_hardware(cpu):
    cpu(False)
    cfg = _compose(["model=qwen2.5-0.5b"])
    saved = resolved_container(cfg, validate_config(cfg))
    assert saved["model"]["dtype"] == "float32" and saved["judge"]["hf_dtype"] == "float32"
    runtime = saved["runtime"]
    assert runtime["requested_dtypes"] == {"model.dtype": "auto", "judge.hf_dtype": "auto"}
    assert runtime["cpu_native_bf16"] is False and runtime["cuda"] is False
    assert runtime["cpu_capability"] == torch.backends.cpu.get_cpu_capability()
    from omegaconf import OmegaConf

    OmegaConf.create(saved)  # plain values only: it is written as YAML


def test_a_bad_dtype_is_refused_before_anything_loads():
    # dtypes are enum choices: Hydra refuses them while composing, naming the override and the choices
    for override in ("judge.hf_dtype=int8", "model.dtype=fp8"):
        with pytest.raises(Exception) as info:
            _compose([override])
        text = f"{info.value}\n{info.value.__cause__}"
        assert override in text and "expected one of [auto, float32, bfloat16, float16]" in text, text
