"""The pipeline's dependency graph (sal.pipeline.steps): a setting changes the fingerprint of
the step that reads it and of every step after it, and nothing else; settings that change
only how a step runs change no fingerprint."""

from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

from sal.config.schema import register_configs, validate_config
from sal.pipeline import steps

ROOT = Path(__file__).resolve().parents[2]
register_configs()

ORDER = ("crosscoder", "explanations", "layer_counts", "rules", "labelled_rules", "sal")


def _config(*overrides):
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        return validate_config(compose(config_name="evaluate", overrides=["model=tiny-random", *overrides]))


def _run_all(run_dir: Path, *overrides, config_json='{"layers": [0, 1]}') -> dict:
    """Each step's digest, with each step "run" (a stand-in output and its fingerprint) in
    pipeline order, so that later stages read what earlier ones recorded."""
    cfg = _config(*overrides)
    out = {}
    for name in ORDER:
        step = getattr(steps, f"{name}_step")(cfg, run_dir)
        step.output.parent.mkdir(parents=True, exist_ok=True)
        step.output.write_text(config_json if name == "crosscoder" else name)
        step.record()
        out[name] = step.digest
    return out


def _changed(tmp_path, *overrides) -> set:
    base, now = _run_all(tmp_path / "base"), _run_all(tmp_path / "changed", *overrides)
    return {name for name in ORDER if base[name] != now[name]}


@pytest.mark.parametrize("override, changed", [
    ("crosscoder.n_features=512", set(ORDER)),
    ("sparsity=1e-2", set(ORDER)),
    ("optim.max_steps=21", set(ORDER)),
    ("data.max_questions=17", set(ORDER)),
    ("data.max_doc_tokens=48", set(ORDER)),
    ("interpret.tau=0.5", {"explanations", "rules", "labelled_rules", "sal"}),
    ("interpret.min_activations=3", {"explanations", "rules", "labelled_rules", "sal"}),
    ("judge.hf_calibrate=false", {"explanations", "rules", "labelled_rules", "sal"}),
    ("rules.tau=0.5", {"layer_counts", "rules", "labelled_rules", "sal"}),
    ("rules.aggregate=any_token", {"layer_counts", "rules", "labelled_rules", "sal"}),
    ("data.rule_set_unfinished=exclude", {"layer_counts", "rules", "labelled_rules", "sal"}),
    ("rules.min_rule_count=2", {"rules", "labelled_rules", "sal"}),
    ("evaluate.n_rules_per_arity=7", {"labelled_rules", "sal"}),
    ("evaluate.bins=10", {"sal"}),
    ("evaluate.n_bootstrap=20", {"sal"}),
])
def test_a_setting_changes_its_step_and_every_step_after_it(tmp_path, override, changed):
    assert _changed(tmp_path, override) == changed


@pytest.mark.parametrize("override", [
    "trainer.log_every_n_steps=7", "trainer.enable_progress_bar=false", "optim.checkpoint_every_n_steps=3",
    "optim.docs_per_forward=2", "rules.num_processes=2", "rules.chunk_samples=64", "rules.memory_budget_gb=1",
    "rules.progress=false", "judge.concurrency=3", "judge.timeout_s=5", "judge.max_retries=1",
    "judge.price_per_1k_prompt=1", "model.device=cpu", "logger=csv", "run_name=other",
])
def test_settings_that_change_only_how_a_step_runs_change_no_fingerprint(tmp_path, override):
    assert _changed(tmp_path, override) == set()


def test_the_judge_is_part_of_what_it_judges(tmp_path):
    assert _changed(tmp_path, "judge=replay", "judge.replay_path=labels.csv") == {
        "explanations", "rules", "labelled_rules", "sal"}


def test_a_crosscoder_without_a_fingerprint_is_known_by_its_config_file(tmp_path):
    """An export from before fingerprints (or trained through the Python API): retraining it
    changes its config.json (final metrics), hence everything after it."""
    base = _run_all(tmp_path / "a")
    now = _run_all(tmp_path / "b", config_json='{"layers": [0, 1], "final_metrics": {"nmse": 0.5}}')
    assert base["crosscoder"] == now["crosscoder"]  # same training inputs
    for run in ("a", "b"):
        (tmp_path / run / "crosscoder" / "fingerprint.json").unlink()
    cfg = _config()
    a, b = (steps.explanations_step(cfg, tmp_path / run).digest for run in ("a", "b"))
    assert a != b


def test_evaluate_reads_what_extract_recorded_not_its_own_config(tmp_path):
    """Rules extracted with rules.tau=0.5: evaluate.py, run without repeating the override,
    still sees rules made at tau 0.5 (recorded), and so recomputes when they change."""
    run_dir = tmp_path / "run"
    _run_all(run_dir)
    before = steps.labelled_rules_step(_config(), run_dir).digest
    tau = _config("rules.tau=0.5")
    rules = steps.rules_step(tau, run_dir)
    rules.record()
    assert steps.labelled_rules_step(_config(), run_dir).digest != before
