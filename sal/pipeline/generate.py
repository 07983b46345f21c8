"""Generation is its own step: the subject model answers the corpus's and the rule set's
questions once, before anything else needs the GPU.

- vLLM (`data.generation.backend=vllm`) runs in a process of its own, started before any
  stage loads the HF subject model, so its engine has the GPU to itself
  (`data.generation.vllm_gpu_memory_utilization`) and gives all of it back when the process
  ends.
- The HF backend runs in the stage's process with the model the stage loaded (a CPU has no
  memory to hand back, and loading the model twice would double the start-up).
- Under torchrun or SLURM only global rank 0 generates; the other ranks wait for its files.
- Batches are written atomically as they finish (sal.data.corpus.generate_responses), so a
  killed job resumes at the first missing batch; the two sets' files are written last and
  are what every later run takes for "done".
"""

from __future__ import annotations

import dataclasses
import logging
import multiprocessing
import os
import time
from pathlib import Path

import pandas as pd

from sal import atomic

from sal.config.model import ModelConfig
from sal.config.schema import SALConfig

log = logging.getLogger("sal")

def launch_rank() -> int:
    """This process's global rank as the launcher set it (torchrun: RANK; SLURM: SLURM_PROCID;
    Lightning's own DDP children: NODE_RANK / LOCAL_RANK); 0 when launched alone."""
    for var in ("RANK", "SLURM_PROCID"):
        if os.environ.get(var, "").strip():
            return int(os.environ[var])
    return int(os.environ.get("NODE_RANK", 0) or 0) * 1_000_000 + int(os.environ.get("LOCAL_RANK", 0) or 0)


def is_done(out_dir: Path) -> bool:
    return all((out_dir / f"{k}.parquet").exists() for k in KINDS)


def generate_corpus(cfg: SALConfig, model=None, tokenizer=None) -> Path:
    """Make sure both question sets have their responses; returns their directory.

    ``model``/``tokenizer``: the stage's loaded subject model, used by the HF backend when it
    is also the writer of the responses (not for a null model reading its twin's text)."""
    out_dir, writer_cfg = corpus_location(cfg)
    if is_done(out_dir):
        return out_dir
    rank = launch_rank()
    if rank != 0:
        return wait_for_rank_zero(out_dir, rank, cfg.data.generation.rank_wait_s)
    if cfg.data.generation.backend == "vllm":
        run_in_own_process(cfg)
    else:
        if writer_cfg is not cfg.model:
            model = tokenizer = None
        write_corpus(cfg, model, tokenizer)
    return out_dir


def prepare_corpus(cfg: SALConfig) -> None:
    """What a stage calls before it loads the subject model: with vLLM, generate now, in a
    process of its own; with the HF backend, nothing (the stage's model will write)."""
    if cfg.data.generation.backend == "vllm":
        generate_corpus(cfg)


def run_in_own_process(cfg: SALConfig) -> None:
    # spawn, not fork: a forked child would share the parent's CUDA state, if any
    child = multiprocessing.get_context("spawn").Process(target=write_corpus, args=(cfg,), name="sal-generate")
    log.info("generating responses with vLLM in process %s (the GPU is free until it ends)", child.name)
    child.start()
    child.join()
    if child.exitcode != 0:
        raise RuntimeError(f"response generation (vLLM, its own process) exited with status {child.exitcode}; its "
                           f"finished batches are kept, and rerunning the stage resumes after them.")


def wait_for_rank_zero(out_dir: Path, rank: int, timeout_s: float, poll_s: float = 5.0) -> Path:
    log.info("rank %d: waiting for rank 0's responses in %s", rank, out_dir)
    deadline = time.monotonic() + timeout_s
    while not is_done(out_dir):
        if time.monotonic() > deadline:
            raise TimeoutError(f"rank {rank}: rank 0 wrote no corpus in {out_dir} within "
                               f"data.generation.rank_wait_s={timeout_s:g} s; see rank 0's log.")
        time.sleep(poll_s)
    return out_dir


def write_corpus(cfg: SALConfig, model=None, tokenizer=None) -> Path:
    """Generate (or finish generating) both sets' responses and write them with their manifest."""
    from sal.data.corpus import (COLUMNS, DocumentBudget, generate_responses, hf_generator, select_corpus_questions,
                                 stratified_rule_set, vllm_generator)
    from sal.models import convert_gguf, load_subject_model, load_tokenizer
    out_dir, writer_cfg = corpus_location(cfg)
    source_counts: dict = {}
    questions = {"corpus": select_corpus_questions(cfg.data, source_counts), "rule_set": stratified_rule_set(cfg.data)}
    log.info("generating responses for %s -> %s",
             " and ".join(f"{len(q)} {k} questions" for k, q in questions.items()), out_dir)
    gen = cfg.data.generation
    if gen.backend == "vllm":
        path = str(convert_gguf(writer_cfg)) if writer_cfg.source == "gguf" else (writer_cfg.local_path or writer_cfg.hub_id)
        tokenizer = load_tokenizer(writer_cfg)
        generator = vllm_generator(path, gen, dtype=writer_cfg.dtype)
    else:
        if model is None:
            model, tokenizer = load_subject_model(writer_cfg)
        generator = hf_generator(model, tokenizer, gen)
    budget = DocumentBudget(tokenizer, cfg.data.max_doc_tokens, gen.max_new_tokens)
    both = generate_responses(questions["corpus"] + questions["rule_set"], generator, out_dir, gen,
                              desc=f"responses ({writer_cfg.name})", final_name="responses.parquet", budget=budget)
    n = len(questions["corpus"])
    parts = {"corpus": both.iloc[:n], "rule_set": both.iloc[n:]}
    # the manifest first: the sets' files are what later runs take for "done"
    write_manifest(out_dir / "manifest.json", cfg, writer_cfg, source_counts, parts)
    for k, part in parts.items():  # each set on its own, numbered from 0
        atomic.write_parquet(part.assign(idx=range(len(part)))[COLUMNS].reset_index(drop=True), out_dir / f"{k}.parquet")
    return out_dir


def write_manifest(path: Path, cfg: SALConfig, writer_cfg, source_counts: dict, parts: dict) -> None:
    """What the corpus and the rule set are: per source, the rows read, kept after
    de-duplication, after the length filter and in the sample; and per set, how many
    responses finished within data.max_doc_tokens."""

    def lengths(df: pd.DataFrame) -> dict:
        n_tokens = df["n_tokens"][df["n_tokens"] >= 0]
        return {"n_documents": int(len(df)), "n_finished": int(df["finished"].sum()),
                "n_unfinished": int((~df["finished"]).sum()),
                "n_tokens_mean": float(n_tokens.mean()) if len(n_tokens) else None,
                "n_tokens_max": int(n_tokens.max()) if len(n_tokens) else None}

    d = cfg.data
    manifest = {
        "writer": {"model": writer_cfg.name, "init": writer_cfg.init, "hub_id": writer_cfg.hub_id,
                   "revision": writer_cfg.revision, "dtype": writer_cfg.dtype},
        "max_doc_tokens": d.max_doc_tokens,
        "generation": dataclasses.asdict(d.generation),
        "corpus": {"sources": source_counts, "max_question_chars": d.max_question_chars,
                   "max_questions": d.max_questions, "seed": d.seed, **lengths(parts["corpus"])},
        "rule_set": {"source": d.rule_set_source, "per_stratum": d.rule_set_per_stratum,
                     "n_strata": int(parts["rule_set"][["type", "level"]].drop_duplicates().shape[0]),
                     "unfinished": d.rule_set_unfinished, **lengths(parts["rule_set"])},
    }
    atomic.write_json(path, manifest)


def corpus_root(cfg: SALConfig) -> Path:
    return Path(cfg.paths.cache_dir) / "corpus"


KINDS = ("corpus", "rule_set")
"""The two question sets the subject model answers: the training corpus and Appendix D's rule set."""


def corpus_location(cfg: SALConfig) -> tuple[Path, ModelConfig]:
    """(directory of the two generated sets, the model that writes their responses): the
    subject model, or its pretrained twin when data.responses_from=pretrained."""
    from sal.data.corpus import corpus_key

    writer_cfg = cfg.model
    if cfg.data.responses_from == "pretrained" and cfg.model.init == "random":
        writer_cfg = dataclasses.replace(cfg.model, init="pretrained")
    return corpus_root(cfg) / "+".join(corpus_key(writer_cfg, cfg.data, k) for k in KINDS), writer_cfg


def build_corpus(cfg: SALConfig, kind: str, model=None, tokenizer=None) -> pd.DataFrame:
    """The training corpus (kind='corpus') or the rule set (kind='rule_set'), generated by the
    subject model (or by its pretrained twin when data.responses_from=pretrained), cached on
    disk and resumable (sal.pipeline.generate).

    Both sets are generated together, in the same batches, whichever is asked for first: a
    CPU (or a GPU) decodes one wide batch for little more than a narrow one, and the two
    sets' texts then depend on the configuration alone, not on which stage ran first."""
    if kind not in KINDS:
        raise ValueError(f"unknown corpus kind {kind!r}: choose one of {KINDS}")
    out_dir = generate_corpus(cfg, model, tokenizer)
    return pd.read_parquet(out_dir / f"{kind}.parquet")
