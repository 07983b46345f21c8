"""Where runs and caches live, and how a relative path is made absolute."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from omegaconf import OmegaConf


def launch_path(path: str) -> str:
    """`path` made absolute against the directory the run was launched from (Hydra's
    original working directory, whatever hydra.job.chdir says; the current one outside
    Hydra). Behind ``${sal.abspath:...}`` in conf/judge: a relative $SAL_CACHE must name one
    judge cache for every run, not one under each run directory."""
    p = Path(os.path.expanduser(str(path)))
    if p.is_absolute():
        return str(p)
    base = os.getcwd()
    try:
        from hydra.core.hydra_config import HydraConfig
        from hydra.utils import get_original_cwd

        if HydraConfig.initialized():
            base = get_original_cwd()
    except (ImportError, ValueError):
        pass
    return str(Path(base) / p)


if not OmegaConf.has_resolver("sal.abspath"):
    OmegaConf.register_new_resolver("sal.abspath", launch_path)


def cache_root() -> Path:
    """The one cache folder (corpora, converted models, activation and judge caches):
    $SAL_CACHE, else .cache/sal, made absolute against the directory the run was launched
    from. ``paths.cache_dir`` defaults to it; the model converter, which sees no config
    paths, reads it directly."""
    return Path(launch_path(os.environ.get("SAL_CACHE") or ".cache/sal"))


@dataclass
class PathsConfig:
    runs_root: str = "runs"
    """Single runs write to <runs_root>/<model.name>/<run_name>."""
    cache_dir: str = "${sal.cache_root:}"
    """Corpora, converted models and activation caches shared by all runs."""
