"""Schema for experiment tracking."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from sal.config.choices import WandbMode, coerce_choices


@dataclass
class LoggerConfig:
    wandb: bool = True
    """Log to Weights & Biases (offline mode when WANDB_API_KEY is unset)."""
    wandb_project: str = "sal"
    """W&B project name."""
    wandb_entity: Optional[str] = None
    """W&B entity (team or user); None uses the default."""
    wandb_mode: WandbMode = WandbMode.auto
    """auto (online iff WANDB_API_KEY is set), online, offline or disabled."""
    csv: bool = True
    """Also write every metric to CSV in the run directory."""

    def __post_init__(self) -> None:
        coerce_choices(self, "logger")
