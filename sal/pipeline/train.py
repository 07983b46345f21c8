"""train.py: corpus -> streaming residual-stream activations -> crosscoder export."""

from __future__ import annotations

import dataclasses

from omegaconf import DictConfig

from sal.pipeline.common import build_corpus, log, resolved_container, save_resolved_config, setup


def run(cfg: DictConfig) -> dict:
    typed, run_dir = setup(cfg)
    from sal.training.plan import make_plan, refusal

    # The plan comes from the configs alone: a job that cannot fit stops before any weights load.
    plan = make_plan(typed.crosscoder, typed.optim, typed.model, typed.trainer, typed.layers.indices)
    print(f"[train] plan:\n{plan.format()}")
    if typed.plan_out:
        plan.write(typed.plan_out)
    if typed.plan:
        return plan.to_dict()
    if not plan.fits:
        raise ValueError(refusal(plan))
    save_resolved_config(cfg, typed, run_dir / "config" / "train.yaml")

    from sal.data.corpus import document_texts
    from sal.models import load_subject_model
    from sal.training.run import format_summary, train_crosscoder

    from sal.pipeline.generate import prepare_corpus

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
    print(f"[train] {typed.model.name}: {format_summary(result.summary)}")
    print(f"[train] crosscoder exported to {result.export_dir}")
    return result.summary
