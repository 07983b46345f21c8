"""train.py: corpus -> streaming residual-stream activations -> crosscoder export."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

from omegaconf import DictConfig

from sal.config.schema import SALConfig
from sal.errors import ConfigError
from sal.pipeline.common import log, resolved_container, save_resolved_config, setup
from sal.pipeline.generate import build_corpus


def run(cfg: DictConfig, typed: SALConfig | None = None) -> dict:
    typed, run_dir = setup(cfg, typed)
    from sal.training.plan import make_plan, refusal

    # The plan comes from the configs alone: a job that cannot fit stops before any weights load.
    plan = make_plan(typed.crosscoder, typed.optim, typed.model, typed.trainer, typed.layers.indices)
    print(f"[train] plan:\n{plan.format()}")
    if typed.plan_out:
        plan.write(typed.plan_out)
    if typed.plan:
        return plan.to_dict()
    if not plan.fits:
        raise ConfigError(refusal(plan))
    from sal.preflight import check_model

    check_model(typed.model)  # the weights are there (or reachable) before anything is written or loaded
    save_resolved_config(cfg, typed, run_dir / "config" / "train.yaml")

    from sal.pipeline.generate import launch_rank, prepare_corpus
    from sal.pipeline.steps import crosscoder_step

    step = crosscoder_step(typed, run_dir)
    if step.is_fresh(typed.force):
        from sal.training.summary import format_summary

        summary = json.loads(step.output.read_text()).get("final_metrics") or {}
        print(f"[train] {typed.model.name}: crosscoder up to date in {step.output.parent} "
              f"({format_summary(summary)}); force=true retrains it")
        return summary
    from sal.data.corpus import document_texts
    from sal.models import load_subject_model
    from sal.training.run import train_crosscoder
    from sal.training.summary import format_summary

    if launch_rank() == 0:
        clear_stale_training(typed, run_dir)
    prepare_corpus(typed)  # vLLM generates now, in its own process, before the subject model loads
    model, tokenizer = load_subject_model(typed.model)
    corpus = build_corpus(typed, "corpus", model, tokenizer)
    texts = document_texts(corpus)
    log.info("Training on %d documents at layers %s", len(texts), typed.layers.indices)
    result = train_crosscoder(
        typed.crosscoder, typed.optim, typed.trainer, model, tokenizer, texts, typed.layers.indices, run_dir,
        logger=typed.logger,
        model_name=typed.model.name,
        subject_model=dataclasses.asdict(typed.model),
        resolved_config=resolved_container(cfg, typed),
        plan=plan,
    )
    if launch_rank() == 0 and step.output.exists():
        step.record()
    print(f"[train] {typed.model.name}: {format_summary(result.summary)}")
    print(f"[train] crosscoder exported to {result.export_dir}")
    return result.summary


def clear_stale_training(cfg: SALConfig, run_dir: Path) -> None:
    """Before (re)training: drop an export made from other inputs, and checkpoints that a
    run with other inputs (or of unknown inputs) left, which Lightning would otherwise
    resume; then record the inputs the checkpoints about to be written belong to."""
    from sal.pipeline.steps import checkpoints_step, crosscoder_step

    export = crosscoder_step(cfg, run_dir).output.parent
    if export.exists():
        shutil.rmtree(export)
    ckpt = checkpoints_step(cfg, run_dir)
    if ckpt.output.exists() and not ckpt.is_fresh(cfg.force, quiet=True):
        log.warning("training: discarding %s (%s); training starts from step 0", ckpt.output.parent,
                    "force=true" if cfg.force else "written with other settings" if ckpt.recorded()
                    else "no record of the settings it was written with")
        shutil.rmtree(ckpt.output.parent)
    elif ckpt.output.exists():
        log.info("training: resuming %s, written with these settings", ckpt.output)
    ckpt.record()
