"""evaluate.py: the analysis that ``analysis=<name>`` chooses, one module each under
sal.pipeline.analyses: one model's SAL with its CI, p-value and ΔSAL against a null twin
(single), the cross-model fit (compare), the seed and settings spread (robustness), the
trained-network validation (validate), the planted-counts check (planted) and the judge
budget (power)."""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig

from sal.browser import write_browser
from sal.config.schema import SALConfig
from sal.pipeline.analyses.compare import run_compare
from sal.pipeline.analyses.planted import run_planted
from sal.pipeline.analyses.power import run_power
from sal.pipeline.analyses.robustness import run_robustness
from sal.pipeline.analyses.single import run_single
from sal.pipeline.analyses.validate import run_validate
from sal.pipeline.common import resolved_container, save_resolved_config, setup
from sal.pipeline.inputs import check_against_training

ANALYSES = {"single": run_single, "compare": run_compare, "robustness": run_robustness, "validate": run_validate,
            "planted": run_planted, "power": run_power}
"""analysis.name -> fn(typed config, output directory, resolved config as a dict) -> summary."""


def run(cfg: DictConfig, typed: SALConfig | None = None):
    typed, run_dir = setup(cfg, typed)
    name = typed.analysis.name
    if name == "single":
        check_against_training(typed, run_dir / "crosscoder", "evaluate.py")
    save_resolved_config(cfg, typed, run_dir / "config" / f"evaluate_{name}.yaml")
    summary = ANALYSES[name](typed, output_dir(typed, run_dir), resolved_container(cfg, typed))
    if name == "single":
        # Here rather than inside run_single: single ends in three ways (up to date, SAL not
        # computable, SAL computed) and every one of them leaves a run worth browsing.
        print(f"[evaluate] browser: {write_browser(run_dir)}")
    return summary


def output_dir(cfg: SALConfig, run_dir: Path) -> Path:
    """Where an analysis writes: the run directory for single (and for any analysis given
    run_dir=); otherwise a directory of its own under paths.runs_root."""
    name = cfg.analysis.name
    if name == "single" or cfg.run_dir:
        return run_dir
    if name == "robustness":
        # One model's dictionaries: beside that model's runs.
        out = Path(cfg.paths.runs_root) / cfg.model.name / f"robustness-{cfg.run_name}"
    else:
        # Cross-model and synthetic analyses belong to no single model's run directory.
        out = Path(cfg.paths.runs_root) / "_analysis" / name / cfg.run_name
    out.mkdir(parents=True, exist_ok=True)
    return out
