"""extract_rules.py: feature interpretation over the corpus, then exact 1-/2-premise rule
counts over the rule set (Appendix D), sharded over the trainer's ranks."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.sparse as sp
from omegaconf import DictConfig

from sal.atomic import atomic_path
from sal.config.schema import SALConfig
from sal.errors import ConfigError, MissingInputError
from sal.fingerprint import Step
from sal.pipeline.common import resolved_container, save_resolved_config, setup
from sal.pipeline.generate import build_corpus, launch_rank
from sal.pipeline.inputs import check_against_training
from sal.pipeline.steps import crosscoder_digest, explanations_step, layer_counts_step, rules_step
from sal.tracking_tables import log_extract

log = logging.getLogger("sal")

DECISION_ORDER = ("No", "Maybe", "Probably", "Yes")


def load_crosscoder(cfg: SALConfig, run_dir: Path, device):
    from sal.crosscoder import Crosscoder

    export = run_dir / "crosscoder"
    require_crosscoder(run_dir)
    crosscoder = Crosscoder.from_pretrained(export, device=device)
    layers = [int(i) for i in Crosscoder.load_config(export)["layers"]]
    if layers != list(cfg.layers.indices):  # only under accept_mismatch=true (sal.pipeline.inputs)
        log.warning("The crosscoder was trained on layers %s; using those (config says %s)", layers, cfg.layers.indices)
    return crosscoder.eval(), layers


def allowed_features(explanations: pd.DataFrame, min_level: str) -> list[int]:
    """Features whose explanation verified at ``min_level`` or better (paper: Maybe)."""
    ok_levels = DECISION_ORDER[DECISION_ORDER.index(min_level):]
    return [int(f) for f in explanations.feature[explanations.decision.isin(ok_levels)]]


def run_interpretation(cfg: SALConfig, run_dir: Path, model, tokenizer, crosscoder, layers) -> pd.DataFrame:
    """Top spans over the training corpus, explained and verified by the judge; writes
    features/explanations.parquet (the caller decides whether it is up to date)."""
    from sal.data.corpus import document_texts
    from sal.features import feature_pass
    from sal.feature_explanations import interpret_features
    from sal.judge import make_judge
    from sal.top_spans import TopSpanCollector

    corpus = build_corpus(cfg, "corpus", model, tokenizer)
    texts = document_texts(corpus)
    interpret_cfg = cfg.interpret
    collector = TopSpanCollector(crosscoder.n_features, k=interpret_cfg.top_k, window=interpret_cfg.span_window,
                                 tau=interpret_cfg.tau, store_tokens=True, layers=layers)
    cached = None
    if cfg.optim.activation_cache:  # training saved this corpus's residual stream: no second forward
        from sal.training.cache import cached_token_activations

        cached = cached_token_activations(cfg.optim.activation_cache, model, tokenizer, texts, layers, cfg.optim,
                                          cfg.model.name)
        log.info("feature pass (corpus): %s", "activations read from the training cache" if cached is not None
                 else "no reusable activation cache; running the subject model")
    for fb in feature_pass(model, tokenizer, crosscoder, texts, layers, cfg.data.max_doc_tokens,
                           desc="feature pass (corpus)", cached=cached):
        # Spans are collected "regardless of which layer they activate in" (the collector takes
        # the max over layers), and each keeps the layers it fired in.
        collector.update(fb.feats_BTLC, fb.token_ids_BT, fb.mask_BT, fb.doc_ids)
    result = interpret_features(collector, make_judge(cfg.judge, run_dir=run_dir), tokenizer, run_dir, interpret_cfg)
    t3, unit = result.table3, interpret_cfg.activation_unit
    print(f"[extract] features: dead rate {100 * t3['dead_rate']:.2f}%, explainable rate "
          f"{100 * (t3['explainable_rate'] or 0):.2f}% of {t3['n_judged']} judged ({t3['n_sufficient']} active in >= "
          f"{interpret_cfg.min_activations} {unit} of {t3['n_documents' if unit == 'documents' else 'n_tokens']}), "
          f"{len(result.allowed)} allowed")
    return result.explanations


def rule_set_layer_counts(cfg: SALConfig, run_dir: Path, model, tokenizer, crosscoder, layers) -> sp.csr_matrix:
    """One layer-count vector per rule-set sample (CSR [n_samples, C]), written to the
    layer-counts step's output (the caller decides whether it is up to date)."""
    from sal.data.corpus import document_texts
    from sal.features import feature_pass
    from sal.rules import LayerCountBuilder, aggregate_batch

    unfinished = cfg.data.rule_set_unfinished
    path = layer_counts_step(cfg, run_dir).output
    rule_set = build_corpus(cfg, "rule_set", model, tokenizer)
    n_total, n_unfinished = len(rule_set), int((~rule_set.finished).sum())
    if unfinished == "exclude":
        rule_set = rule_set[rule_set.finished]
        if rule_set.empty:
            raise ConfigError(f"No rule-set response finished within data.max_doc_tokens={cfg.data.max_doc_tokens} "
                             f"(data.generation.max_new_tokens={cfg.data.generation.max_new_tokens}): raise them, or "
                             f"set data.rule_set_unfinished=include to count responses cut by the budget.")
    log.info("rule set: %d responses; %d did not finish within the token budget and are %s", n_total, n_unfinished,
             "left out" if unfinished == "exclude" else "kept (data.rule_set_unfinished=include)")
    texts = document_texts(rule_set)
    builder = LayerCountBuilder(crosscoder.n_features)
    for fb in feature_pass(model, tokenizer, crosscoder, texts, layers, cfg.data.max_doc_tokens,
                           desc="feature pass (rule set)"):
        for row in aggregate_batch(fb.feats_BTLC, fb.mask_BT.to(fb.feats_BTLC.device), tau=cfg.rules.tau,
                                   mode=cfg.rules.aggregate, layer_activity=cfg.rules.layer_activity):
            builder.add(row)
    counts = builder.to_csr()
    with atomic_path(path) as tmp:
        sp.save_npz(tmp, counts)
    return counts


def run_rule_counting(cfg: SALConfig, run_dir: Path, layer_counts: sp.csr_matrix, allowed) -> pd.DataFrame | None:
    """count_rules in-process, or sharded over the trainer's DDP ranks on its ``num_nodes`` nodes
    (global rank 0 gets the table)."""
    from sal.rules import count_rules, run_sharded

    r, t = cfg.rules, cfg.trainer
    n_proc = r.num_processes
    if n_proc == 1 and "ddp" in t.strategy and isinstance(t.devices, int):
        n_proc = t.devices
    opts = dict(max_premises=r.max_premises, beta=r.beta, min_premise_count=r.min_premise_count,
                min_rule_count=r.min_rule_count, allowed=allowed, chunk_samples=r.chunk_samples,
                memory_budget_gb=r.memory_budget_gb)
    if n_proc > 1 or t.num_nodes > 1:
        return run_sharded(layer_counts, str(run_dir / "rules"), n_proc, num_nodes=t.num_nodes, progress=r.progress,
                           **opts)
    return count_rules(layer_counts, spill_dir=r.spill_dir, progress=r.progress, **opts)


def run(cfg: DictConfig, typed: SALConfig | None = None):
    typed, run_dir = setup(cfg, typed)
    check_against_training(typed, run_dir / "crosscoder", "extract_rules.py")  # before any model loads
    save_resolved_config(cfg, typed, run_dir / "config" / "extract_rules.yaml")
    require_crosscoder(run_dir)
    from sal.rules import summarize_rules

    stage_steps = {"explanations": explanations_step(typed, run_dir),
                   "layer_counts": layer_counts_step(typed, run_dir), "rules": rules_step(typed, run_dir)}
    if stage_steps["rules"].is_fresh(typed.force):
        rules = pd.read_parquet(stage_steps["rules"].output)
        print(f"[extract] rules up to date in {stage_steps['rules'].output} (force=true recomputes them)")
        print(summarize_rules(rules))
        return {"n_rules": int(len(rules))}
    stale = {name for name in ("explanations", "layer_counts") if not stage_steps[name].is_fresh(typed.force)}
    writer = launch_rank() == 0
    if stale:
        from sal.models import load_subject_model
        from sal.pipeline.generate import prepare_corpus

        prepare_corpus(typed)  # vLLM generates now, in its own process, before the subject model loads
        model, tokenizer = load_subject_model(typed.model)
        crosscoder, layers = load_crosscoder(typed, run_dir, model.device)
    explanations = _made_or_read(stage_steps["explanations"], "explanations" in stale, writer, pd.read_parquet,
                                 lambda: run_interpretation(typed, run_dir, model, tokenizer, crosscoder, layers))
    layer_counts = _made_or_read(stage_steps["layer_counts"], "layer_counts" in stale, writer, sp.load_npz,
                                 lambda: rule_set_layer_counts(typed, run_dir, model, tokenizer, crosscoder, layers))
    allowed = allowed_features(explanations, typed.rules.min_explanation_level) if typed.rules.restrict_to_explained else None
    if writer:
        stage_steps["rules"].forget()
    rules = run_rule_counting(typed, run_dir, layer_counts, allowed)
    if rules is None:  # a non-zero rank of a sharded count: rank 0 writes the outputs
        return None
    from sal.rules import write_rules_outputs

    paths = write_rules_outputs(str(run_dir / "rules"), rules, layer_counts, config=typed.rules)
    stage_steps["rules"].record()
    n_active = np.diff(layer_counts.indptr)
    print(f"[extract] rule set: {layer_counts.shape[0]} samples, {n_active.mean():.1f} active features per sample "
          f"({typed.rules.aggregate}, {typed.rules.layer_activity} layer atoms), {len(allowed) if allowed is not None else 'all'} allowed features")
    print(summarize_rules(rules))
    print(f"[extract] wrote {json.dumps(paths)}")
    log_extract(typed, run_dir, rules, resolved_container(cfg, typed))
    return {"n_rules": int(len(rules))}


def _made_or_read(step: Step, stale: bool, writer: bool, read, make):
    """A step's output: read back when up to date, else made (its fingerprint recorded after
    it, by the process that writes the outputs)."""
    if not stale:
        return read(step.output)
    step.forget()
    value = make()
    if writer:
        step.record()
    return value


def require_crosscoder(run_dir: Path) -> None:
    if crosscoder_digest(run_dir) is None:
        raise MissingInputError(f"No crosscoder in {run_dir / 'crosscoder'}: run `python train.py` with the same "
                                f"model and run_name first (or set run_dir= to a finished training run).")
