"""What every stage shares: the run directory, seeding and logging set-up (the corpora are
sal.pipeline.generate's)."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Tuple

from omegaconf import DictConfig, OmegaConf

from sal import atomic
from sal.config.schema import SALConfig, validate_config

log = logging.getLogger("sal")

REPO_ROOT = Path(__file__).resolve().parents[2]
"""The repository's root, not Hydra's working directory: child processes import sal from
it, and analysis.network.figures_dir is relative to it."""


def setup(cfg: DictConfig, typed: SALConfig | None = None) -> Tuple[SALConfig, Path]:
    """Validate the config (unless the entrypoint did: ``typed``), seed, and return (typed
    config, run dir)."""
    from lightning.pytorch import seed_everything

    from sal.hardware import log_choice

    typed = typed if typed is not None else validate_config(cfg)
    log_choice(f"subject model {typed.model.name}", cfg.model.dtype, typed.model.dtype, typed.model.device, log)
    if typed.judge.backend == "hf_local":
        log_choice("hf_local judge", cfg.judge.hf_dtype, typed.judge.hf_dtype, typed.judge.hf_device, log)
    run_dir = Path(typed.run_dir) if typed.run_dir else Path(_hydra_output_dir())
    run_dir.mkdir(parents=True, exist_ok=True)
    seed_everything(typed.seed, verbose=False)
    return typed, run_dir


def _hydra_output_dir() -> str:
    from hydra.core.hydra_config import HydraConfig

    try:
        return HydraConfig.get().runtime.output_dir
    except ValueError:  # called outside a Hydra app (tests)
        return os.getcwd()


def resolved_container(cfg: DictConfig, typed: SALConfig) -> dict:
    """The resolved config as a dict, with what validation decided filled in: the dtypes
    that `auto` became, and a `runtime` block with the hardware facts behind them."""
    from sal.hardware import describe

    out = OmegaConf.to_container(cfg, resolve=True, enum_to_str=True)
    out["model"]["dtype"] = typed.model.dtype
    out["judge"]["hf_dtype"] = typed.judge.hf_dtype
    out["runtime"] = {
        "requested_dtypes": {"model.dtype": cfg.model.dtype, "judge.hf_dtype": cfg.judge.hf_dtype},
        **describe(typed.model.device),
    }
    return out


def save_resolved_config(cfg: DictConfig, typed: SALConfig, path: Path) -> None:
    """The resolved YAML next to an artifact (no secrets: keys are read from the env only)."""
    atomic.write_text(path, OmegaConf.to_yaml(OmegaConf.create(resolved_container(cfg, typed))))
