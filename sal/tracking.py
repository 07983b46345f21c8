"""W&B for every stage: a run for the non-training stages, Lightning's WandbLogger for
training; both decide the mode (``wandb_mode``) here."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, Optional

from sal.config.logger import LoggerConfig

log = logging.getLogger(__name__)


def wandb_mode(cfg: LoggerConfig) -> str:
    """auto: online only when WANDB_API_KEY is set, so nothing tries the network by surprise."""
    if cfg.wandb_mode != "auto":
        return cfg.wandb_mode
    return "online" if os.environ.get("WANDB_API_KEY") else "offline"


def start_run(cfg: LoggerConfig, run_dir: Path, name: str, job_type: str, config: dict) -> Optional[Any]:
    """A W&B run in ``run_dir/wandb`` or None when W&B is off or unavailable."""
    if not cfg.wandb or wandb_mode(cfg) == "disabled":
        return None
    try:
        import wandb
    except ImportError:  # pragma: no cover
        log.warning("wandb is not installed; metrics stay in the run directory only")
        return None
    return wandb.init(project=cfg.wandb_project, entity=cfg.wandb_entity, name=name, job_type=job_type,
                      dir=str(run_dir), mode=wandb_mode(cfg), config=config, reinit="finish_previous")


def lightning_wandb_logger(cfg: LoggerConfig, run_dir: Path, name: str, config: dict) -> Optional[Any]:
    """Training's W&B logger (Lightning's WandbLogger), or None when W&B is off or broken: W&B
    is optional, and a run is never lost because of it."""
    if not cfg.wandb or wandb_mode(cfg) == "disabled":
        return None
    try:
        import wandb  # noqa: F401  (fails fast when the package is broken or absent)
        from lightning.pytorch.loggers import WandbLogger

        return WandbLogger(project=cfg.wandb_project, entity=cfg.wandb_entity, name=name, save_dir=str(run_dir),
                           mode=wandb_mode(cfg), config=config)
    except Exception as exc:
        log.warning("W&B logging disabled (%s: %s); metrics still go to CSV.", type(exc).__name__, exc)
        return None


def log_images(run, images: dict[str, Path]) -> None:
    if run is None:
        return
    import wandb

    run.log({k: wandb.Image(str(p)) for k, p in images.items() if p and Path(p).exists()})
