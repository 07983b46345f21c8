"""Build the model-specific corpus: questions + the subject model's own 'think' responses.

Generation is resumable: each finished batch is written atomically as its own Parquet file,
named by batch index, so a killed run restarts at the first missing batch and can never
write a row twice. The finished corpus is one Parquet table with columns
``idx, question, response, source, type, level``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import random
from dataclasses import asdict
from pathlib import Path
from typing import Callable, List, Sequence

import pandas as pd
from tqdm.auto import tqdm

from sal.config.data import DataConfig, GenerationConfig
from sal.config.model import ModelConfig
from sal.data.prompts import build_prompt
from sal.data.sources import load_questions, load_source

log = logging.getLogger(__name__)

COLUMNS = ["idx", "question", "response", "source", "type", "level"]


def _digest(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:12]


def corpus_key(model: ModelConfig, data: DataConfig, kind: str) -> str:
    """Directory name for one (responding model, question set, generation settings)."""
    # The dtype is part of the writer: bf16 and fp32 logits sample different responses.
    ident = {"model": [model.name, model.hub_id, model.source, model.init, model.seed, model.revision, model.dtype],
             "kind": kind, "generation": asdict(data.generation), "seed": data.seed}
    if kind == "corpus":
        ident.update(sources=list(data.sources), max_questions=data.max_questions)
    else:
        ident.update(source=data.rule_set_source, per_stratum=data.rule_set_per_stratum)
    if data.max_question_chars is not None:
        ident.update(max_question_chars=data.max_question_chars)
    return f"{model.name}-{model.init}-{kind}-{_digest(ident)}"


def _short_enough(rows: List[dict], data: DataConfig) -> List[dict]:
    if data.max_question_chars is None:
        return rows
    return [r for r in rows if len(r["question"]) <= data.max_question_chars]


def select_corpus_questions(data: DataConfig) -> List[dict]:
    rows = _short_enough(load_questions(list(data.sources)), data)
    if data.max_questions is not None and len(rows) > data.max_questions:
        rng = random.Random(data.seed)
        rows = [rows[i] for i in sorted(rng.sample(range(len(rows)), data.max_questions))]
    return rows


def stratified_rule_set(data: DataConfig) -> List[dict]:
    """Appendix D's rule set: ``rule_set_per_stratum`` questions per (type, level), seeded;
    strata smaller than that are taken whole. Rows come back in (type, level) order."""
    rows = _short_enough(load_source(data.rule_set_source), data)
    if not any(r["type"] for r in rows):
        raise ValueError(f"data.rule_set_source={data.rule_set_source!r} has no type/level fields; "
                         f"use a MATH split (math_test or math_train).")
    strata: dict = {}
    for r in rows:
        strata.setdefault((r["type"], r["level"]), []).append(r)
    rng = random.Random(data.seed)
    out = []
    for key in sorted(strata):
        group = strata[key]
        take = min(data.rule_set_per_stratum, len(group))
        out.extend(group[i] for i in sorted(rng.sample(range(len(group)), take)))
    return out


Generator = Callable[[List[str], int], List[str]]
"""(prompts, batch_index) -> responses; batch_index seeds the sampling so reruns reproduce."""


def hf_generator(model, tokenizer, gen: GenerationConfig) -> Generator:
    """Batched temperature + top-p sampling with a transformers model (sal.data.sampling:
    the distribution of `generate(do_sample=True, ...)`, its shared prompt head computed
    once). Sampling is exactly temperature + top-p: extras in a model's generation_config
    (repetition penalty, top-k) are not applied."""
    from sal.data.sampling import sample_batch

    eos = model.generation_config.eos_token_id if getattr(model, "generation_config", None) else None
    eos = eos if eos is not None else tokenizer.eos_token_id
    eos_ids = [e for e in (eos if isinstance(eos, (list, tuple)) else [eos]) if e is not None]
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos_ids[0]

    def run(prompts: List[str], batch_index: int) -> List[str]:
        ids = [list(x) for x in tokenizer(list(prompts))["input_ids"]]
        new = sample_batch(model, ids, gen.max_new_tokens, gen.temperature, gen.top_p, gen.seed + batch_index,
                           eos_ids, pad_id)
        return [t.strip() for t in tokenizer.batch_decode(new, skip_special_tokens=True)]

    return run


def vllm_generator(model_path: str, gen: GenerationConfig, dtype: str = "bfloat16") -> Generator:
    """vLLM backend for GPU nodes (``pip install sal[vllm]``)."""
    try:
        from vllm import LLM, SamplingParams
    except ImportError as e:  # pragma: no cover - exercised only where vLLM is installed
        raise ImportError("data.generation.backend=vllm needs the vllm extra: pip install 'sal[vllm]'") from e
    llm = LLM(model=model_path, dtype=dtype, seed=gen.seed)

    def run(prompts: List[str], batch_index: int) -> List[str]:
        params = SamplingParams(temperature=gen.temperature, top_p=gen.top_p,
                                max_tokens=gen.max_new_tokens, seed=gen.seed + batch_index)
        return [o.outputs[0].text.strip() for o in llm.generate(prompts, params, use_tqdm=False)]

    return run


def write_atomic(df: pd.DataFrame, path: Path) -> None:
    tmp = path.with_suffix(path.suffix + f".tmp{os.getpid()}")
    df.to_parquet(tmp, index=False)
    os.replace(tmp, path)


def generate_responses(
    questions: Sequence[dict],
    generator: Generator,
    out_dir: Path,
    gen: GenerationConfig,
    desc: str = "generating responses",
    final_name: str = "corpus.parquet",
) -> pd.DataFrame:
    """Responses for ``questions``, resuming from the batches already in ``out_dir``; the
    finished table is ``out_dir / final_name``."""
    out_dir = Path(out_dir)
    final = out_dir / final_name
    if final.exists():
        return pd.read_parquet(final)
    batch_dir = out_dir / "batches"
    batch_dir.mkdir(parents=True, exist_ok=True)
    n_batches = (len(questions) + gen.batch_size - 1) // gen.batch_size
    todo = [b for b in range(n_batches) if not (batch_dir / f"batch_{b:06d}.parquet").exists()]
    if len(todo) < n_batches:
        log.info("Resuming generation: %d of %d batches already done", n_batches - len(todo), n_batches)
    indexed = [dict(q, idx=i) for i, q in enumerate(questions)]
    for b in tqdm(todo, desc=desc, unit="batch"):
        rows = indexed[b * gen.batch_size:(b + 1) * gen.batch_size]
        prompts = [build_prompt(r["question"], gen.prompt) for r in rows]
        responses = generator(prompts, b)
        for r, resp in zip(rows, responses):
            r["response"] = resp
        write_atomic(pd.DataFrame(rows)[COLUMNS], batch_dir / f"batch_{b:06d}.parquet")
    parts = [pd.read_parquet(batch_dir / f"batch_{b:06d}.parquet") for b in range(n_batches)]
    df = pd.concat(parts, ignore_index=True).sort_values("idx").reset_index(drop=True)
    write_atomic(df, final)
    return df


def document_texts(df: pd.DataFrame) -> List[str]:
    """What the crosscoder reads: the question and the model's own response (Section 3.1's
    corpus), without the prompt template's instructions, which every document would share
    and which would otherwise claim a large part of a small dictionary."""
    return [f"{q}\n\n{r}" for q, r in zip(df["question"], df["response"])]
