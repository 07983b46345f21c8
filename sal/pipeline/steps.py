"""The pipeline's steps and what each one's outputs depend on (sal.fingerprint).

    train.py          crosscoder      <- corpus, subject model, layers, crosscoder, optim, trainer
    extract_rules.py  explanations    <- crosscoder, corpus, interpret, judge
                      layer_counts    <- crosscoder, rule set, rules.tau/aggregate/layer_activity, unfinished
                      rules           <- layer_counts, explanations, rules' counting settings
    evaluate.py       labelled_rules  <- rules, explanations, sample size and seed, judge
                      sal             <- labelled_rules, histogram and test settings

Each list names the settings that change a step's numbers and leaves out those that only
change how it runs (devices, concurrency, timeouts, progress bars, memory budgets, the
counting engine): a new GPU or a faster judge must not retrain a dictionary. The corpus
takes part through its directory name, which is already a digest of everything that
writes it (sal.data.corpus.corpus_key).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sal.config.schema import SALConfig
from sal.fingerprint import Step, file_digest, settings

JUDGE_ANSWER_SETTINGS = {
    "openai": ("base_url", "model", "temperature", "top_p", "max_tokens", "max_parse_retries"),
    "hf_local": ("hf_model", "hf_gguf_file", "hf_dtype", "hf_max_new_tokens", "hf_calibrate", "hf_use_chat_template",
                 "max_parse_retries"),
    "lexical": ("lexical_max_ngram", "lexical_min_share"),
    "replay": ("replay_path",),
}
"""Per backend, the judge settings its answers depend on (the rest: keys, concurrency,
retries, timeouts, prices, cache location, device and batch size, change only how fast or
how reliably the same answers come)."""


def judge_settings(cfg: SALConfig) -> dict[str, Any]:
    j = cfg.judge
    return {"judge.backend": j.backend, **settings("judge", j, JUDGE_ANSWER_SETTINGS[j.backend])}


def corpus_name(cfg: SALConfig) -> str:
    from sal.pipeline.generate import corpus_location

    return corpus_location(cfg)[0].name


def crosscoder_step(cfg: SALConfig, run_dir: Path) -> Step:
    m, o = cfg.model, cfg.optim
    inputs = {
        "corpus": corpus_name(cfg),
        **settings("model", m, ("name", "hub_id", "source", "local_path", "gguf_package", "gguf_file", "revision",
                                "init", "seed", "dtype")),
        "layers.indices": list(cfg.layers.indices),
        **settings("crosscoder", cfg.crosscoder),
        # docs_per_forward and micro_batch_instances only split the same batch (the plan picks them).
        **settings("optim", o, ("lr", "betas", "eps", "weight_decay", "max_steps", "cooldown_frac",
                                "sparsity_warmup_frac", "batch_instances", "tokens_per_instance",
                                "max_tokens_per_instance", "shuffle_buffer_tokens", "grad_clip")),
        # Activations read back from the cache are stored in its dtype.
        "optim.cache_dtype": o.cache_dtype if o.activation_cache else None,
        **settings("trainer", cfg.trainer, ("precision", "devices", "num_nodes")),
        "seed": cfg.seed,
    }
    export = run_dir / "crosscoder"
    return Step("crosscoder", export / "config.json", inputs, fingerprint_path=export / "fingerprint.json")


def checkpoints_step(cfg: SALConfig, run_dir: Path) -> Step:
    """The training checkpoints: resumable only by a run with the crosscoder's inputs."""
    ckpt = run_dir / "checkpoints"
    return Step("training checkpoints", ckpt / "last.ckpt", crosscoder_step(cfg, run_dir).inputs,
                fingerprint_path=ckpt / "fingerprint.json")


def recorded_digest(step: Step) -> str | None:
    """An artifact an earlier stage made, as a later stage knows it: the fingerprint it was
    recorded with (the earlier stage's own config decided it, and this stage's config need
    not repeat those settings), else the digest of its bytes; None when it is absent."""
    record = step.recorded()
    if record is not None and step.output.exists():
        return record["digest"]
    return file_digest(step.output) if step.output.exists() else None


def crosscoder_digest(run_dir: Path) -> str | None:
    """The trained crosscoder for later stages (None when there is no export: the stage
    that needs one says so)."""
    export = run_dir / "crosscoder"
    return recorded_digest(Step("crosscoder", export / "config.json", {}, fingerprint_path=export / "fingerprint.json"))


def explanations_step(cfg: SALConfig, run_dir: Path) -> Step:
    inputs = {
        "upstream.crosscoder": crosscoder_digest(run_dir),
        "corpus": corpus_name(cfg),
        "data.max_doc_tokens": cfg.data.max_doc_tokens,
        **settings("interpret", cfg.interpret),
        **judge_settings(cfg),
    }
    return Step("feature explanations", run_dir / "features" / "explanations.parquet", inputs)


def layer_counts_step(cfg: SALConfig, run_dir: Path) -> Step:
    r, d = cfg.rules, cfg.data
    inputs = {
        "upstream.crosscoder": crosscoder_digest(run_dir),
        "corpus": corpus_name(cfg),
        "data.max_doc_tokens": d.max_doc_tokens,
        "data.rule_set_unfinished": d.rule_set_unfinished,
        **settings("rules", r, ("tau", "aggregate")),
    }
    activity = ""
    if r.layer_activity != "encoder":  # only when set, so runs made before the option stay up to date
        inputs.update(settings("rules", r, ("layer_activity",)))
        activity = f"_{r.layer_activity}"
    name = f"layer_counts_{r.aggregate}{activity}_tau{r.tau:g}_unfinished-{d.rule_set_unfinished}.npz"
    return Step("rule-set layer counts", run_dir / "rules" / name, inputs)


def rules_step(cfg: SALConfig, run_dir: Path) -> Step:
    r = cfg.rules
    inputs = {
        "upstream.layer_counts": layer_counts_step(cfg, run_dir).digest,
        # The engine, process count, chunking and memory budget give the same counts.
        **settings("rules", r, ("max_premises", "beta", "min_premise_count", "min_rule_count",
                                "restrict_to_explained", "min_explanation_level")),
    }
    if r.restrict_to_explained:
        inputs["upstream.explanations"] = explanations_step(cfg, run_dir).digest
    return Step("rules", run_dir / "rules" / "rules.parquet", inputs)


def labelled_rules_step(cfg: SALConfig, run_dir: Path) -> Step:
    inputs = {  # made by extract_rules.py
        "upstream.rules": recorded_digest(rules_step(cfg, run_dir)),
        "upstream.explanations": recorded_digest(explanations_step(cfg, run_dir)),
        **settings("evaluate", cfg.evaluate, ("n_rules_per_arity", "seed")),
        **judge_settings(cfg),
    }
    return Step("judged rule sample", run_dir / "evaluate" / "labelled_rules.parquet", inputs)


def sal_step(cfg: SALConfig, run_dir: Path) -> Step:
    inputs = {
        "upstream.labelled_rules": labelled_rules_step(cfg, run_dir).digest,
        **settings("model", cfg.model, ("name", "init")),
        **settings("evaluate", cfg.evaluate, ("bins", "report_bins", "n_bootstrap", "n_permutations", "ci_level",
                                              "empty_category", "human_labels", "min_rules_per_category",
                                              "categories", "n_case_studies", "seed")),
    }
    twin = null_twin_dir(cfg, run_dir)
    if twin is not None:
        inputs["evaluate.null_twin"] = str(twin)
        inputs["upstream.null_twin"] = recorded_digest(Step("SAL", twin / "sal.json", {}))
    return Step("SAL", run_dir / "sal.json", inputs)


def null_twin_dir(cfg: SALConfig, run_dir: Path) -> Path | None:
    """The run directory evaluate.null_twin names: a run name beside this run, or a path."""
    name = cfg.evaluate.null_twin
    if not name:
        return None
    return Path(name) if len(Path(name).parts) > 1 or name in (".", "..") else run_dir.parent / name
