"""Build the model-specific corpus: questions + the subject model's own 'think' responses.

Generation is resumable: each finished batch is written atomically as its own Parquet file,
named by batch index, so a killed run restarts at the first missing batch and can never
write a row twice. The finished corpus is one Parquet table with columns
``idx, question, response, finished, n_tokens, source, type, level``: ``finished`` says the
response ended by itself (an end of sequence within its budget) and the document fits in
data.max_doc_tokens; ``n_tokens`` is the document's length in the subject model's tokens.
"""

from __future__ import annotations

import hashlib
import json
import logging
import random
from dataclasses import asdict
from pathlib import Path
from typing import Callable, List, Optional, Sequence, Tuple

import pandas as pd
from tqdm.auto import tqdm

from sal.atomic import write_parquet
from sal.config.data import DataConfig, GenerationConfig
from sal.config.model import ModelConfig
from sal.data.prompts import KEPT_STOPS, build_prompt, stop_strings
from sal.data.sources import load_questions, load_source
from sal.errors import ConfigError
from sal.faults import kill_point

log = logging.getLogger(__name__)

COLUMNS = ["idx", "question", "response", "finished", "n_tokens", "source", "type", "level"]


RUNTIME_ONLY = ("vllm_gpu_memory_utilization", "vllm_tensor_parallel_size", "rank_wait_s")
"""Generation settings that change how, not what, is generated (left out of the corpus key)."""


def response_stops(gen: GenerationConfig) -> tuple:
    """The strings that end a response: generation.stop, or the prompt template's."""
    return tuple(gen.stop) if gen.stop is not None else stop_strings(gen.prompt)


def cut_at_stop(text: str, stops: Sequence[str], keep: Sequence[str] = KEPT_STOPS) -> tuple[str, bool]:
    """``text`` up to its first stop string (kept when it is in ``keep``, the closing tag;
    dropped when it starts a new turn), and whether one was found."""
    hits = [(text.find(s), s) for s in stops if s and s in text]
    if not hits:
        return text, False
    at, stop = min(hits)
    return text[:at + len(stop)] if stop in keep else text[:at], True


def _digest(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:12]


def corpus_key(model: ModelConfig, data: DataConfig, kind: str) -> str:
    """Directory name for one (responding model, question set, generation settings)."""
    # The dtype is part of the writer: bf16 and fp32 logits sample different responses.
    generation = {k: v for k, v in asdict(data.generation).items() if k not in RUNTIME_ONLY}
    generation["stop"] = list(response_stops(data.generation))
    ident = {"model": [model.name, model.hub_id, model.source, model.init, model.seed, model.revision, model.dtype],
             "kind": kind, "generation": generation, "seed": data.seed,
             "max_doc_tokens": data.max_doc_tokens}
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


def select_corpus_questions(data: DataConfig, counts: Optional[dict] = None) -> List[dict]:
    """The corpus's questions: the sources de-duplicated, length-filtered, then a seeded sample
    of data.max_questions. ``counts``, when given, receives per source the rows read, kept
    after de-duplication, after the length filter and in the final sample."""
    per_source: dict = {}
    rows = load_questions(list(data.sources), per_source)
    short = _short_enough(rows, data)
    selected = short
    if data.max_questions is not None and len(short) > data.max_questions:
        rng = random.Random(data.seed)
        selected = [short[i] for i in sorted(rng.sample(range(len(short)), data.max_questions))]
    if counts is not None:
        for name, c in per_source.items():
            counts[name] = dict(c, short_enough=sum(r["source"] == name for r in short),
                                selected=sum(r["source"] == name for r in selected))
    return selected


def stratified_rule_set(data: DataConfig) -> List[dict]:
    """Appendix D's rule set: ``rule_set_per_stratum`` questions per (type, level), seeded;
    strata smaller than that are taken whole. Rows come back in (type, level) order."""
    rows = _short_enough(load_source(data.rule_set_source), data)
    if not any(r["type"] for r in rows):
        raise ConfigError(f"data.rule_set_source={data.rule_set_source!r} has no type/level fields; "
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


Generator = Callable[[List[str], int, List[int]], Tuple[List[str], List[bool]]]
"""(prompts, batch_index, max new tokens per prompt) -> (responses, whether each ended by
itself rather than at its cap); batch_index seeds the sampling so reruns reproduce."""


DOC_SEPARATOR = "\n\n"
"""Between the question and the response in a document (document_texts)."""


class DocumentBudget:
    """data.max_doc_tokens applied with the subject model's tokenizer: how many new tokens a
    question leaves its response, and how long a finished document is."""

    def __init__(self, tokenizer, max_doc_tokens: int, max_new_tokens: int):
        self.tokenizer, self.max_doc_tokens, self.max_new_tokens = tokenizer, int(max_doc_tokens), int(max_new_tokens)

    def n_tokens(self, texts: Sequence[str]) -> List[int]:
        return [len(ids) for ids in self.tokenizer(list(texts))["input_ids"]] if len(texts) else []

    def new_tokens(self, questions: Sequence[str]) -> List[int]:
        """What each question leaves (>= 0), at most generation.max_new_tokens."""
        used = self.n_tokens([q + DOC_SEPARATOR for q in questions])
        return [max(0, min(self.max_new_tokens, self.max_doc_tokens - n)) for n in used]


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

    stops = response_stops(gen)

    def run(prompts: List[str], batch_index: int, caps: List[int]) -> Tuple[List[str], List[bool]]:
        ids = [list(x) for x in tokenizer(list(prompts))["input_ids"]]
        new = sample_batch(model, ids, caps, gen.temperature, gen.top_p, gen.seed + batch_index, eos_ids, pad_id)
        texts, ended = [], []
        for tokens, cap, text in zip(new, caps, tokenizer.batch_decode(new, skip_special_tokens=True)):
            # Sampling is left to right, so cutting at the first stop string gives what a
            # generation stopped there would have (vLLM stops there itself).
            text, stopped = cut_at_stop(text, stops)
            # sample_batch stops a row at its cap or drops the end-of-sequence token that ended it
            texts.append(text.strip())
            ended.append(stopped or len(tokens) < cap)
        return texts, ended

    return run


def vllm_generator(model_path: str, gen: GenerationConfig, dtype: str = "bfloat16") -> Generator:
    """vLLM backend for GPU nodes (``pip install sal[vllm]``). Run it where no other model
    holds the GPU (sal.pipeline.generate runs it in a process of its own)."""
    try:
        from vllm import LLM, SamplingParams
    except ImportError as e:  # pragma: no cover - exercised only where vLLM is installed
        raise ImportError("data.generation.backend=vllm needs the vllm extra: pip install 'sal[vllm]'") from e
    llm = LLM(model=model_path, dtype=dtype, seed=gen.seed, gpu_memory_utilization=gen.vllm_gpu_memory_utilization,
              tensor_parallel_size=gen.vllm_tensor_parallel_size)
    stops = list(response_stops(gen))

    def run(prompts: List[str], batch_index: int, caps: List[int]) -> Tuple[List[str], List[bool]]:
        todo = [i for i, c in enumerate(caps) if c > 0]  # vLLM needs max_tokens >= 1
        params = [SamplingParams(temperature=gen.temperature, top_p=gen.top_p, max_tokens=caps[i],
                                 seed=gen.seed + batch_index, stop=stops, include_stop_str_in_output=True)
                  for i in todo]
        texts, ended = [""] * len(prompts), [False] * len(prompts)
        outputs = llm.generate([prompts[i] for i in todo], params, use_tqdm=False) if todo else []
        for i, o in zip(todo, outputs):
            # vLLM keeps whichever stop string ended the text; a new turn's is cut off
            texts[i] = cut_at_stop(o.outputs[0].text, stops)[0].strip()
            ended[i] = o.outputs[0].finish_reason == "stop"
        return texts, ended

    return run


def generate_responses(
    questions: Sequence[dict],
    generator: Generator,
    out_dir: Path,
    gen: GenerationConfig,
    desc: str = "generating responses",
    final_name: str = "corpus.parquet",
    budget: Optional[DocumentBudget] = None,
) -> pd.DataFrame:
    """Responses for ``questions``, resuming from the batches already in ``out_dir``; the
    finished table is ``out_dir / final_name``. Without a ``budget`` every response may take
    generation.max_new_tokens and ``n_tokens`` is left at -1 (unknown)."""
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
        questions_b = [r["question"] for r in rows]
        caps = budget.new_tokens(questions_b) if budget else [gen.max_new_tokens] * len(rows)
        responses, ended = generator(prompts, b, caps)
        lengths = budget.n_tokens([q + DOC_SEPARATOR + t for q, t in zip(questions_b, responses)]) if budget \
            else [-1] * len(rows)
        for r, resp, done, n in zip(rows, responses, ended, lengths):
            # A re-tokenised document can come out a token longer than its parts: it still
            # has to fit, or the later stages cut it and its last token is not the response's.
            fits = budget is None or n <= budget.max_doc_tokens
            r.update(response=resp, finished=bool(done) and fits, n_tokens=int(n))
        write_parquet(pd.DataFrame(rows)[COLUMNS], batch_dir / f"batch_{b:06d}.parquet")
        kill_point("generate.batch", b)
    parts = [pd.read_parquet(batch_dir / f"batch_{b:06d}.parquet") for b in range(n_batches)]
    df = pd.concat(parts, ignore_index=True).sort_values("idx").reset_index(drop=True)
    write_parquet(df, final)
    return df


def document_texts(df: pd.DataFrame) -> List[str]:
    """What the crosscoder reads: the question and the model's own response (Section 3.1's
    corpus), without the prompt template's instructions, which every document would share
    and which would otherwise claim a large part of a small dictionary."""
    return [f"{q}{DOC_SEPARATOR}{r}" for q, r in zip(df["question"], df["response"])]
