"""W&B for every stage: a run for the non-training stages, Lightning's WandbLogger for
training; both decide the mode (``wandb_mode``) and the run's group and name
(``stage_identity``) here. What each stage logs is sal.tracking_tables'."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, Callable, Optional

from sal.config.logger import LoggerConfig

log = logging.getLogger(__name__)

ANALYSIS_OWNER = "_analysis"
"""The owner of a stage that belongs to no single model (compare), as in its output folder
<runs_root>/_analysis/<analysis>/<run_name>."""


def wandb_mode(cfg: LoggerConfig) -> str:
    """auto: online only when WANDB_API_KEY is set, so nothing tries the network by surprise."""
    if cfg.wandb_mode != "auto":
        return cfg.wandb_mode
    return "online" if os.environ.get("WANDB_API_KEY") else "offline"


def wandb_enabled(cfg: Optional[LoggerConfig]) -> bool:
    return cfg is not None and cfg.wandb and wandb_mode(cfg) != "disabled"


def stage_identity(owner: str, run_name: str, stage: str) -> tuple[str, str]:
    """(group, name) of a stage's W&B run. The name is ``<owner>/<run_name>/<stage>`` and the
    group ``<owner>/<run_name>``, so train, extract and evaluate of one run sit together; in
    a Hydra multirun the group is the sweep directory, so a sweep's jobs sit side by side,
    and the name carries the job number (jobs of one sweep may share model and run name)."""
    sweep = _hydra_sweep()
    if sweep is None:
        return f"{owner}/{run_name}", f"{owner}/{run_name}/{stage}"
    sweep_dir, job = sweep
    return sweep_dir, f"{owner}/{run_name}/job{job}/{stage}"


def _hydra_sweep() -> Optional[tuple[str, int]]:
    """(sweep directory, job number) inside a Hydra multirun job, else None (a single run,
    or no Hydra app at all: tests and library calls)."""
    try:
        from hydra.core.hydra_config import HydraConfig
        from hydra.types import RunMode

        hydra_cfg = HydraConfig.get()
    except (ImportError, ValueError):
        return None
    if hydra_cfg.mode != RunMode.MULTIRUN:
        return None
    return str(hydra_cfg.sweep.dir), int(hydra_cfg.job.num)


def start_run(cfg: LoggerConfig, run_dir: Path, stage: str, config: dict, *, owner: str,
              run_name: str) -> Optional[Any]:
    """A W&B run in ``run_dir/wandb`` or None when W&B is off or unavailable."""
    if not wandb_enabled(cfg):
        return None
    try:
        import wandb
    except ImportError:  # pragma: no cover
        log.warning("wandb is not installed; metrics stay in the run directory only")
        return None
    group, name = stage_identity(owner, run_name, stage)
    return wandb.init(project=cfg.wandb_project, entity=cfg.wandb_entity, name=name, group=group, job_type=stage,
                      dir=str(run_dir), mode=wandb_mode(cfg), config=config, reinit="finish_previous")


def log_stage(cfg, run_dir: Path, stage: str, config: dict, payload: Callable[[], dict],
              owner: Optional[str] = None) -> bool:
    """One W&B run for a finished stage: ``payload()`` (built only when W&B is on) logged as
    one step, then the run finished. ``cfg``: the stage's SALConfig (its logger, model name
    and run name). W&B is optional: any failure is a warning, and the stage's outputs on disk
    stand. Returns whether the run was logged."""
    run = None
    try:
        run = start_run(cfg.logger, run_dir, stage, config, owner=owner or cfg.model.name, run_name=cfg.run_name)
        if run is None:
            return False
        run.log(payload())
        return True
    except Exception as exc:
        log.warning("W&B logging of the %s stage failed (%s: %s); its outputs are in %s", stage,
                    type(exc).__name__, exc, run_dir)
        return False
    finally:
        _finish(run)


def _finish(run) -> None:
    if run is None:
        return
    try:
        run.finish()
    except Exception as exc:
        log.warning("W&B run did not finish cleanly (%s: %s)", type(exc).__name__, exc)


def lightning_wandb_logger(cfg: LoggerConfig, run_dir: Path, name: str, config: dict, group: Optional[str] = None,
                           notes: Optional[str] = None) -> Optional[Any]:
    """Training's W&B logger (Lightning's WandbLogger), or None when W&B is off or broken: W&B
    is optional, and a run is never lost because of it."""
    if not wandb_enabled(cfg):
        return None
    try:
        import wandb  # noqa: F401  (fails fast when the package is broken or absent)
        from lightning.pytorch.loggers import WandbLogger

        return WandbLogger(project=cfg.wandb_project, entity=cfg.wandb_entity, name=name, save_dir=str(run_dir),
                           mode=wandb_mode(cfg), config=config, group=group, job_type="train", notes=notes)
    except Exception as exc:
        log.warning("W&B logging disabled (%s: %s); metrics still go to CSV.", type(exc).__name__, exc)
        return None


def training_identity(config: dict, fallback_name: str) -> tuple[Optional[str], str]:
    """(group, name) of the training run from its resolved config, as the later stages'
    (``stage_identity``); (None, ``fallback_name``) for a config without a model name and run
    name (train_crosscoder called as a library)."""
    model = config.get("model")
    model_name = model.get("name") if isinstance(model, dict) else None
    run_name = config.get("run_name")
    if not model_name or not run_name:
        return None, fallback_name
    return stage_identity(model_name, run_name, "train")


def images(paths: dict[str, Optional[Path]]) -> dict:
    """{key: wandb.Image} of the figures that were written."""
    import wandb

    return {k: wandb.Image(str(p)) for k, p in paths.items() if p and Path(p).exists()}
