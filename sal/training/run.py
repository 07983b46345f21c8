"""``train_crosscoder``: one crosscoder training run in a run directory.

Layout written under ``run_dir``::

    checkpoints/last.ckpt     Lightning checkpoint (every N steps and at the end) for resume
    csv/version_<n>/metrics.csv   every logged metric, one version per (re)start
    wandb/                    W&B files (offline mode when WANDB_API_KEY is unset)
    crosscoder/               the export: model.safetensors + config.json

Resumption: a run killed at any point and started again with the same arguments continues
from ``checkpoints/last.ckpt`` (weights, optimiser, LR schedule, step counter, dead-latent
counters, sparsity controller) and stops at ``optim.max_steps``; the activation stream goes on
with exactly the batches an uninterrupted run would have had (sal.training.stream), so the
exported weights equal those of a run that was never stopped. The checkpoint is written
atomically (AtomicCheckpointIO). A run whose export is complete for the same training config
is a no-op.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from pathlib import Path
from typing import Any, Callable, NamedTuple, Sequence

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from lightning.pytorch.plugins.io import TorchCheckpointIO

from sal.config.crosscoder import CrosscoderConfig, OptimConfig
from sal import tracking
from sal.config.trainer import TrainerConfig
from sal.training.data import ActivationDataModule
from sal.training.module import CrosscoderModule, as_config
from sal.training.plan import TrainPlan, make_plan, refusal
from sal.training.summary import format_summary, regime_verdict

log = logging.getLogger(__name__)

CKPT_DIR, EXPORT_DIR, LAST = "checkpoints", "crosscoder", "last.ckpt"


class TrainResult(NamedTuple):
    export_dir: Path
    """``<run_dir>/crosscoder`` (written by global rank 0)."""
    summary: dict
    """Final metrics: nmse, fvu, l0, dead_frac (means of the last steps), first_fvu, ..."""
    resumed_from_step: int | None
    """Step of the checkpoint this process resumed from, None for a fresh start."""
    global_step: int
    """Optimiser steps done when training stopped."""


def _d_model(model) -> int:
    cfg = getattr(model, "config", None)
    for name in ("hidden_size", "n_embd", "d_model"):
        if cfg is not None and getattr(cfg, name, None):
            return int(getattr(cfg, name))
    raise ValueError("Cannot read d_model from the subject model's config (hidden_size / n_embd).")


def _strategy(name: str):
    """Lightning strategy; DDP's gradients are views into its all-reduce buckets, so a rank
    holds one copy of the gradients, not two (the training plan counts one)."""
    if name == "ddp":
        from lightning.pytorch.strategies import DDPStrategy

        return DDPStrategy(gradient_as_bucket_view=True)
    return name


def describe_model(model, d_model: int):
    """What the training plan needs of a loaded subject model."""
    from types import SimpleNamespace

    first = next(model.parameters())
    return SimpleNamespace(d_model=d_model, n_params=sum(p.numel() for p in model.parameters()),
                           dtype=str(first.dtype).removeprefix("torch."))


def describe_run(model_name: str, layers: Sequence[int], crosscoder_cfg: CrosscoderConfig) -> str:
    """The training run in one line (model, layers, sparsity, width): the W&B run's notes, and
    its name when train_crosscoder is called as a library (no pipeline run name to group by)."""
    sparsity = f"a{crosscoder_cfg.sparsity_coef:g}" if crosscoder_cfg.arch == "relu" else f"topk{crosscoder_cfg.k}"
    return f"{model_name or 'model'}-L{'.'.join(str(i) for i in layers)}-{sparsity}-C{crosscoder_cfg.n_features}"


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's checkpoint writer through sal.atomic: ``last.ckpt`` is replaced whole or not
    at all, on disk before the rename. (Lightning's own writer goes through the system's
    temporary folder: on another filesystem its final move is a copy that a kill can cut.)"""

    def save_checkpoint(self, checkpoint: dict, path, storage_options: Any = None) -> None:
        if storage_options is not None or "://" in str(path):  # remote storage: Lightning's own
            return super().save_checkpoint(checkpoint, path, storage_options)
        from sal.atomic import atomic_path

        with atomic_path(path) as tmp:
            torch.save(checkpoint, tmp)


def _checkpoint_step(path: Path) -> int:
    return int(torch.load(path, map_location="cpu", weights_only=False, mmap=True).get("global_step", 0))


def _make_loggers(run_dir: Path, logger_cfg, name: str, config: dict) -> list:
    from lightning.pytorch.loggers import CSVLogger

    loggers = []
    if logger_cfg is None or getattr(logger_cfg, "csv", True):
        loggers.append(CSVLogger(save_dir=str(run_dir), name="csv", flush_logs_every_n_steps=10))
    # Named and grouped as the later stages' runs (<model>/<run_name>/train), so one W&B
    # workspace lines the stages up; the descriptive name (layers, sparsity, width) goes
    # to the run's notes.
    group, wandb_name = tracking.training_identity(config, name)
    wandb_logger = tracking.lightning_wandb_logger(logger_cfg, run_dir, wandb_name, config, group=group,
                                                   notes=name) if logger_cfg else None
    return loggers + ([wandb_logger] if wandb_logger is not None else [])


def _export_is_complete(export_dir: Path, training: dict) -> dict | None:
    cfg_path = export_dir / "config.json"
    if not cfg_path.exists():
        return None
    import json

    cfg = json.loads(cfg_path.read_text())
    if cfg.get("complete") and cfg.get("training") == training:
        return cfg
    return None


def train_crosscoder(
    crosscoder: CrosscoderConfig | dict,
    optim: OptimConfig | dict,
    trainer: TrainerConfig | dict,
    model,
    tokenizer,
    texts: Sequence[str],
    layers: Sequence[int],
    run_dir: str | os.PathLike,
    *,
    logger=None,
    model_name: str = "",
    subject_model: dict | None = None,
    resolved_config: dict | None = None,
    callbacks: Sequence[Callback] = (),
    capture_fn: Callable | None = None,
    mask_fn: Callable | None = None,
    plan: TrainPlan | None = None,
) -> TrainResult:
    """Train a crosscoder on ``model``'s residual stream at ``layers`` over ``texts``.

    (Long only by its documented arguments: planning, the Trainer, fitting and the export are
    the helpers ``make_plan``, ``_lightning_trainer``, ``_fit`` and ``_export``.)

    Args:
        crosscoder, optim, trainer: configs (dataclasses, dicts or DictConfigs).
        model, tokenizer: the subject model (eval mode) and its tokenizer.
        texts: training documents (question + the model's response, formatted).
        layers: residual-stream points (index i = input of block i; n_layers = last output).
        run_dir: where checkpoints, logs and the export go.
        logger: a ``LoggerConfig`` (wandb, wandb_project, wandb_entity, wandb_mode, csv);
            None = CSV only.
        model_name: short model name (run name, cache key, config.json).
        subject_model: provenance recorded in config.json (e.g. the model config as a dict).
        resolved_config: the resolved Hydra config, attached to W&B and config.json.
        callbacks: extra Lightning callbacks.
        capture_fn, mask_fn: replacements for ``residual_stream`` / ``valid_token_mask``.
        plan: the batch split (sal.training.plan); None plans here from the loaded model.
    """
    crosscoder_cfg = as_config(crosscoder, CrosscoderConfig)
    opt = as_config(optim, OptimConfig)
    tcfg = as_config(trainer, TrainerConfig)
    layers = [int(i) for i in layers]
    run_dir = Path(run_dir)
    ckpt_dir, export_dir = run_dir / CKPT_DIR, run_dir / EXPORT_DIR
    training = {"crosscoder": dataclasses.asdict(crosscoder_cfg), "optim": dataclasses.asdict(opt)}
    training["optim"]["betas"] = list(training["optim"]["betas"])

    done = _export_is_complete(export_dir, training)
    if done is not None:
        summary = done.get("final_metrics") or {}
        print(f"Crosscoder already trained: {export_dir} ({format_summary(summary)})")
        return TrainResult(export_dir, summary, None, int(done.get("global_step", opt.max_steps)))

    if tcfg.accelerator in ("gpu", "cuda"):
        torch.set_float32_matmul_precision(tcfg.matmul_precision)
    L.seed_everything(crosscoder_cfg.seed, workers=True, verbose=False)
    d_model = _d_model(model)
    if plan is None:
        plan = make_plan(crosscoder_cfg, opt, describe_model(model, d_model), tcfg, layers)
    if not plan.fits:
        raise ValueError(refusal(plan))
    opt = dataclasses.replace(opt, docs_per_forward=plan.docs_per_forward)
    module = CrosscoderModule(crosscoder_cfg, opt, n_layers=len(layers), d_model=d_model,
                              accumulate_grad_batches=plan.accumulate_grad_batches)
    datamodule = ActivationDataModule(model, tokenizer, texts, layers, opt, seed=crosscoder_cfg.seed, model_name=model_name,
                                      capture_fn=capture_fn, mask_fn=mask_fn, micro_batch_tokens=plan.micro_batch_tokens,
                                      rank_step_tokens=plan.per_rank_instances * opt.tokens_per_instance)
    config = resolved_config or {"crosscoder": training["crosscoder"], "optim": training["optim"],
                                 "trainer": dataclasses.asdict(tcfg), "layers": layers, "model": model_name}
    ckpt_cb = ModelCheckpoint(dirpath=str(ckpt_dir), save_top_k=0, save_last=True,
                              every_n_train_steps=opt.checkpoint_every_n_steps, enable_version_counter=False)
    pl_trainer = _lightning_trainer(tcfg, opt, plan, [ckpt_cb, *callbacks],
                                    _make_loggers(run_dir, logger, describe_run(model_name, layers, crosscoder_cfg), config), run_dir)
    resumed_from = _fit(pl_trainer, module, datamodule, ckpt_dir / LAST, ckpt_cb)
    summary = module.summary()
    if pl_trainer.is_global_zero:
        _export(module, export_dir, crosscoder_cfg, summary, {
            "layers": layers,
            "subject_model": subject_model or {"name": model_name},
            "training": training,
            "resolved_config": resolved_config,
            "global_step": pl_trainer.global_step,
            "complete": pl_trainer.global_step >= opt.max_steps,
            "final_metrics": summary,
            "activation_scales_note": "encode(normalise(x_raw)); denormalise(decode(h)) gives raw units",
        })
    return TrainResult(export_dir, summary, resumed_from, pl_trainer.global_step)


def _fit(pl_trainer: L.Trainer, module: CrosscoderModule, datamodule, last: Path, ckpt_cb: ModelCheckpoint) -> int | None:
    """Fit, resuming from ``last`` when it exists; returns the step resumed from (None: fresh)."""
    resumed_from = _checkpoint_step(last) if last.exists() else None
    if resumed_from is not None and pl_trainer.is_global_zero:
        print(f"Resuming from {last} (step {resumed_from} of {pl_trainer.max_steps})")
    pl_trainer.fit(module, datamodule=datamodule, ckpt_path=str(last) if last.exists() else None)
    # The periodic checkpoint may predate the final step: save it, so a rerun is a no-op.
    if getattr(ckpt_cb, "_last_global_step_saved", -1) != pl_trainer.global_step:
        pl_trainer.save_checkpoint(str(last), weights_only=False)
    return resumed_from


def _lightning_trainer(tcfg: TrainerConfig, opt: OptimConfig, plan: TrainPlan, callbacks: list, loggers: list,
                       run_dir: Path) -> L.Trainer:
    """The Lightning Trainer of the plan's batch split (no validation loop, atomic checkpoints)."""
    return L.Trainer(
        accelerator=tcfg.accelerator, devices=tcfg.devices, num_nodes=tcfg.num_nodes, strategy=_strategy(tcfg.strategy),
        # Gradient clipping happens in CrosscoderModule.on_before_optimizer_step (not via
        # gradient_clip_val, which Lightning refuses for fused AdamW under mixed precision).
        precision=tcfg.precision, max_steps=opt.max_steps, max_epochs=-1,
        accumulate_grad_batches=plan.accumulate_grad_batches,
        log_every_n_steps=tcfg.log_every_n_steps, callbacks=callbacks, logger=loggers,
        default_root_dir=str(run_dir), enable_progress_bar=tcfg.enable_progress_bar, enable_model_summary=False,
        num_sanity_val_steps=0, limit_val_batches=0, deterministic=tcfg.deterministic,
        use_distributed_sampler=False, plugins=[AtomicCheckpointIO()],
    )


def _export(module: CrosscoderModule, export_dir: Path, crosscoder_cfg: CrosscoderConfig, summary: dict, extra: dict) -> None:
    """Write the trained crosscoder with its provenance (rank 0), and say how sparse it came out."""
    module.crosscoder.save_pretrained(export_dir, extra, fold_scales=crosscoder_cfg.fold_scales_on_export)
    print(f"Crosscoder exported to {export_dir}")
    print(f"Final (mean of last steps, normalised units): {format_summary(summary)}")
    verdict = regime_verdict(summary)
    (print if verdict.startswith("in the") else log.warning)(f"Dictionary: {verdict}")
