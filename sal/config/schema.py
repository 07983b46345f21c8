"""The typed schema every entrypoint is composed against, and its registration.

One schema serves train.py, extract_rules.py and evaluate.py: the three stages share the
model, layers and run directory, and a typo in any key fails at composition time, before a
model loads.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from hydra.core.config_store import ConfigStore
from omegaconf import OmegaConf

from sal.config.crosscoder import CrosscoderConfig, OptimConfig
from sal.config.data import DataConfig
from sal.config.evaluate import AnalysisConfig, EvalConfig, WorldConfig
from sal.config.judge import InterpretConfig, JudgeConfig
from sal.config.logger import LoggerConfig
from sal.config.model import LayersConfig, ModelConfig
from sal.config.paths import PathsConfig, cache_root
from sal.config.rules import RulesConfig
from sal.config.trainer import TrainerConfig
from sal.layers import even_layers


@dataclass
class SALConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    """Subject model (conf/model/*.yaml)."""
    layers: LayersConfig = field(default_factory=LayersConfig)
    """Monitored residual-stream points (conf/layers)."""
    crosscoder: CrosscoderConfig = field(default_factory=CrosscoderConfig)
    """Crosscoder architecture (conf/crosscoder)."""
    optim: OptimConfig = field(default_factory=OptimConfig)
    """Crosscoder optimisation; presets in conf/experiment."""
    data: DataConfig = field(default_factory=DataConfig)
    """Question sources, rule set, response generation (conf/data)."""
    judge: JudgeConfig = field(default_factory=JudgeConfig)
    """LLM judge backend (conf/judge)."""
    interpret: InterpretConfig = field(default_factory=InterpretConfig)
    """Feature interpretation (top spans, explain/verify)."""
    rules: RulesConfig = field(default_factory=RulesConfig)
    """Rule counting (aggregation, smoothing, filters, sharding)."""
    evaluate: EvalConfig = field(default_factory=EvalConfig)
    """SAL evaluation (sampling, bins, bootstrap, permutation test)."""
    analysis: AnalysisConfig = field(default_factory=AnalysisConfig)
    """What evaluate.py does (conf/analysis): single, compare, robustness, validate, planted, power."""
    world: WorldConfig = field(default_factory=WorldConfig)
    """Planted synthetic world for analysis=planted|power (conf/world)."""
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    """Lightning launcher (conf/trainer)."""
    logger: LoggerConfig = field(default_factory=LoggerConfig)
    """W&B + CSV (conf/logger)."""
    paths: PathsConfig = field(default_factory=PathsConfig)
    """Output and cache locations."""
    sparsity: float = 5e-3
    """Crosscoder sparsity coefficient; defaults to model.default_sparsity."""
    run_name: str = "default"
    """Run directory name under <runs_root>/<model.name>/."""
    run_dir: Optional[str] = None
    """Read and write this run directory instead of Hydra's output dir (e.g. to point
    extract_rules.py at one job of a training sweep)."""
    accept_mismatch: bool = False
    """extract_rules.py / evaluate.py: go on (with a warning) when the model, layers, corpus or
    length settings differ from those the crosscoder was trained with; by default they refuse
    (sal.pipeline.inputs)."""
    force: bool = False
    """Recompute this stage's outputs even when their recorded fingerprints match this run's
    settings (sal.fingerprint); by default a stage reuses up-to-date outputs and recomputes
    the ones whose inputs changed. The judge's cache is kept either way."""
    plan: bool = False
    """train.py: print the training plan (batch split, peak memory per device, FLOPs) and exit
    without loading the subject model."""
    plan_out: Optional[str] = None
    """train.py: also write the training plan as JSON to this path."""
    null_model: bool = False
    """Also run the pipeline on a randomly initialised copy of the subject model (control)."""
    seed: int = 0
    """Global seed."""


def _register_resolvers() -> None:
    if not OmegaConf.has_resolver("sal.even_layers"):
        OmegaConf.register_new_resolver("sal.even_layers", lambda n, k: even_layers(int(n), int(k)))
    if not OmegaConf.has_resolver("sal.cache_root"):
        OmegaConf.register_new_resolver("sal.cache_root", lambda: str(cache_root()))
    if not OmegaConf.has_resolver("sal.len"):
        OmegaConf.register_new_resolver("sal.len", lambda xs: len(xs))


def register_configs() -> None:
    """Register the schema (as ``sal_schema``) and the resolvers; idempotent."""
    _register_resolvers()
    ConfigStore.instance().store(name="sal_schema", node=SALConfig)


def resolve_auto_trainer(trainer: TrainerConfig) -> None:
    """trainer=auto: one GPU in bf16 mixed precision when CUDA is there, else fp32 on CPU."""
    import torch

    gpu = torch.cuda.is_available() and trainer.accelerator in ("auto", "gpu", "cuda")
    if trainer.accelerator == "auto":
        trainer.accelerator = "gpu" if gpu else "cpu"
    if trainer.precision == "auto":
        trainer.precision = "bf16-mixed" if gpu else "32-true"
    trainer.check_precision_fits()


def resolve_auto_dtypes(cfg: SALConfig) -> None:
    """dtype=auto for the subject model and the hf_local judge: the hardware decides
    (bfloat16 on a GPU or a CPU with native bf16, float32 elsewhere; sal.hardware)."""
    from sal.hardware import resolve_dtype

    # A GPU trainer puts an "auto"-placed subject model on the GPU, wherever the config is composed.
    on_gpu = cfg.model.device == "auto" and cfg.trainer.accelerator in ("gpu", "cuda")
    cfg.model.dtype = resolve_dtype(cfg.model.dtype, "cuda" if on_gpu else cfg.model.device)
    cfg.judge.hf_dtype = resolve_dtype(cfg.judge.hf_dtype, cfg.judge.hf_device)


def validate_config(cfg) -> SALConfig:
    """Typed, checked view of a composed config; raises ConfigError naming the fix.

    Runs before any model loads: building the typed object runs every sub-config's
    ``__post_init__`` (its own fields; OmegaConf already checked the enum choices while
    composing), then the checks that span groups (layer indices against the model's depth, the sparsity coefficient). The
    checks come before torch is imported (to resolve the ``auto`` choices against the
    hardware), so that a wrong setting is reported within a second or two.
    """
    from sal.errors import ConfigError

    try:
        obj: SALConfig = OmegaConf.to_object(cfg)  # every config's __post_init__ checks its own fields
        _check(obj)
        resolve_auto_trainer(obj.trainer)
    except ConfigError:
        raise
    except ValueError as err:  # every config check raises ValueError; all of them are the user's to fix
        raise ConfigError(str(err)) from err
    resolve_auto_dtypes(obj)
    return obj


def _check(obj: SALConfig) -> None:
    from sal.layers import validate_layers

    validate_layers(obj.layers.indices, obj.model.n_layers)
    if obj.data.max_doc_tokens > obj.model.max_seq_len:
        raise ValueError(f"data.max_doc_tokens={obj.data.max_doc_tokens} exceeds {obj.model.name}'s context window "
                         f"(model.max_seq_len={obj.model.max_seq_len}): lower data.max_doc_tokens.")
    if obj.optim.max_tokens_per_instance != obj.data.max_doc_tokens:
        raise ValueError(f"optim.max_tokens_per_instance={obj.optim.max_tokens_per_instance} differs from "
                         f"data.max_doc_tokens={obj.data.max_doc_tokens}: one document length serves generation, "
                         f"training and the feature passes; set data.max_doc_tokens only.")
