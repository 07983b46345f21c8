"""The typed configs: composition, resolution without network, and early, clear failures."""

import subprocess
import sys
import time
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from sal.config.schema import register_configs, validate_config

ROOT = Path(__file__).resolve().parents[1]
register_configs()


def _compose(app="train", overrides=()):
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        return compose(config_name=app, overrides=list(overrides))


@pytest.mark.parametrize("app", ["train", "extract_rules", "evaluate"])
def test_every_entrypoint_composes_and_validates_on_the_offline_default(app):
    cfg = _compose(app)
    typed = validate_config(cfg)
    assert typed.model.name == "smollm2-135m" and typed.model.source == "gguf"
    assert typed.layers.indices == [0, 4, 9, 13, 17, 21, 26, 30]


def test_qwen7b_resolves_the_papers_layers_and_preset_without_network():
    cfg = _compose("train", ["model=qwen2.5-7b"])
    resolved = OmegaConf.to_container(cfg, resolve=True)
    assert resolved["layers"]["indices"] == [0, 4, 8, 12, 16, 20, 24, 28]
    assert resolved["optim"]["max_steps"] == 5000 and resolved["optim"]["batch_instances"] == 128
    assert resolved["crosscoder"]["n_features"] == 2 ** 15


def test_sparsity_defaults_per_model_and_top_level_override_reaches_the_crosscoder():
    assert _compose("train", ["model=qwen2.5-14b"]).crosscoder.sparsity_coef == 3e-3
    assert _compose("train", ["model=qwen2.5-7b"]).crosscoder.sparsity_coef == 5e-3
    assert _compose("train", ["model=qwen2.5-7b", "sparsity=1e-3"]).crosscoder.sparsity_coef == 1e-3


def test_experiment_override_beats_the_model_preset():
    assert _compose("train", ["model=qwen2.5-7b", "experiment=demo"]).optim.max_steps == 200
    assert _compose("train", []).optim.max_steps == 200  # the offline model picks demo itself


def test_custom_layers():
    cfg = _compose("train", ["model=qwen2.5-7b", "layers=custom", "layers.indices=[0,7,14,21,28]"])
    assert validate_config(cfg).layers.indices == [0, 7, 14, 21, 28]


@pytest.mark.parametrize("overrides, message", [
    (["layers=custom", "layers.indices=[0,10,31]"], r"\[31\].*outside \[0, 30\]"),
    (["sparsity=-1e-3"], r"sparsity_coef=-0.001 \(the `sparsity=` override sets it\) is negative"),
    (["optim.max_steps=0"], "optim.max_steps=0"),
    (["crosscoder=topk", "crosscoder.mse_reduction=mean"], "applies to arch=relu only"),
    (["analysis=compare", "analysis.metric=delta_sal"], "the paper's table has no ΔSAL"),
    (["analysis=robustness", "analysis.robustness.seeds=[1,1]"], "one or more distinct seeds"),
    (["analysis=robustness", "analysis.robustness.min_premise_counts=[0]"], "min_premise_counts=\\[0\\]"),
    (["rules.layer_activity=cumulative", "rules.aggregate=algorithm1"], "no per-layer atom; use last_token or any_token"),
])
def test_bad_values_fail_validation_with_the_fix(overrides, message):
    with pytest.raises(ValueError, match=message):
        validate_config(_compose("train", overrides))


@pytest.mark.parametrize("overrides, message", [
    (["model=qwen9"], "Could not find 'model/qwen9'"),
    (["optim.max_stepz=3"], "Key 'max_stepz' not in 'OptimConfig'"),
    (["optim.max_steps=many"], "Value 'many' of type 'str' could not be converted to Integer"),
    # Choices are enums: OmegaConf refuses a value outside them while composing, naming the choices.
    (["crosscoder.decoder_norm=l3"], r"Invalid value 'l3', expected one of \[l2, l1\](.|\n)*decoder_norm"),
    (["crosscoder.mse_reduction=avg"], r"Invalid value 'avg', expected one of \[sum, mean\]"),
    (["analysis.metric=gain"], r"Invalid value 'gain', expected one of \[sal, delta_sal\]"),
])
def test_unknown_names_and_misspelt_keys_fail_at_composition(overrides, message):
    import re

    with pytest.raises(Exception) as info:
        _compose("train", overrides)
    # Hydra prints the error and its cause; together they name the key and the schema.
    text = f"{info.value}\n{info.value.__cause__}"
    assert re.search(message, text), text


def test_cli_prints_resolved_layers_and_fails_fast_on_bad_index():
    out = subprocess.run([sys.executable, "train.py", "model=qwen2.5-7b", "--cfg", "job", "--resolve"],
                         cwd=ROOT, capture_output=True, text=True, check=True).stdout
    assert "indices:\n  - 0\n  - 4\n  - 8\n  - 12\n  - 16\n  - 20\n  - 24\n  - 28\n" in out
    out = subprocess.run([sys.executable, "train.py", "model=qwen2.5-14b", "sparsity=3e-3", "--cfg", "job",
                          "--resolve"], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    assert "sparsity_coef: 0.003" in out
    t0 = time.perf_counter()
    bad = subprocess.run([sys.executable, "train.py", "layers=custom", "layers.indices=[0,40]",
                          "paths.runs_root=/tmp/sal-never"], cwd=ROOT, capture_output=True, text=True)
    assert bad.returncode != 0 and "outside [0, 30]" in bad.stderr
    assert time.perf_counter() - t0 < 30  # no model was loaded


def test_paper_experiment_switches_data_generation_and_judge():
    cfg = _compose("train", ["model=qwen2.5-7b", "experiment=paper"])
    assert cfg.data.name == "paper" and cfg.data.generation.backend == "vllm"
    assert cfg.judge.backend == "openai" and cfg.judge.api_key_env == "DEEPSEEK_API_KEY"
    assert cfg.optim.max_steps == 5000 and cfg.crosscoder.n_features == 2 ** 15


def test_the_null_twin_of_any_model_is_one_override_away():
    for model in ("smollm2-135m", "qwen2.5-7b"):
        twin = _compose("train", [f"model={model}", "control=null_twin"])
        base = _compose("train", [f"model={model}"])
        assert (twin.model.init, twin.data.responses_from, twin.run_name) == ("random", "pretrained", "null_model")
        assert (base.model.init, base.data.responses_from) == ("pretrained", "self")
        assert twin.model.name == base.model.name and twin.layers.indices == base.layers.indices
    assert _compose("train", ["control=null_twin", "run_name=twin_b"]).run_name == "twin_b"


@pytest.mark.parametrize("override, problem", [
    ("crosscoder.arch=topk", None),
    ("crosscoder.arch=relu,topk", None),  # a sweep: every value is a choice
    ("crosscoder.arch=relu,topx", "crosscoder.arch='topx': choose one of relu, topk."),
    ("rules.min_explanation_level=yes", "rules.min_explanation_level='yes': choose one of Yes, Probably, Maybe."),
    ("analysis.network.aggregate=algorithm2", "analysis.network.aggregate='algorithm2': choose one of last_token, "
                                              "any_token, algorithm1."),
    ("rules.layer_activity=first", "rules.layer_activity='first': choose one of encoder, cumulative."),
    ("model=qwen2.5-7b", None),  # a config group: Hydra's to judge
    ("optim.max_steps=3", None),  # not a choice
    ("optim.max_stepz=3", None),  # not a field: Hydra names it
    ("trainer.accelerator=${oc.env:ACC}", None),  # an interpolation: resolved later
    ("+crosscoder.arch=foo", None),
])
def test_a_wrong_choice_on_the_command_line_is_named_before_hydra(override, problem):
    from sal.config.choices import override_choice_problem
    from sal.config.schema import SALConfig

    assert override_choice_problem(SALConfig, override) == problem


def test_cumulative_layer_activity_is_its_own_layer_counts_step_and_the_default_keeps_its_name(tmp_path):
    from sal.pipeline.steps import layer_counts_step

    def step(overrides):
        return layer_counts_step(validate_config(_compose("extract_rules", overrides)), tmp_path)

    default, cumulative = step([]), step(["rules.layer_activity=cumulative"])
    # Runs made before the option existed stay up to date: the default's file and inputs are unchanged.
    assert default.output.name == "layer_counts_last_token_tau0_unfinished-include.npz"
    assert not any("layer_activity" in k for k in default.inputs)
    assert cumulative.output.name == "layer_counts_last_token_cumulative_tau0_unfinished-include.npz"
    assert cumulative.inputs["rules.layer_activity"] == "cumulative" and cumulative.digest != default.digest
