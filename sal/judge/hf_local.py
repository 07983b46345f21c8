"""Judge on a local transformers causal LM (offline default for rule labels: SmolLM2-135M).

A small model cannot be trusted to follow the output format, so the format is not left to
it: the answer's fixed scaffolding is forced and only the free parts are chosen by the
model.
- The label is chosen among the allowed answer strings by their summed log-likelihood
  after the prompt and the forced prefix: `Final Decision: [[` + Yes/Probably/Maybe/No +
  `]]`, `<judgement> {"Category": "` + Strict/Plausible/No + `"`, `<summary> ` + Exact
  pattern:/Semantic:/Cannot Tell.
- Rules and verifications are contextually calibrated (Zhao et al., 2021, "Calibrate
  Before Use") unless `hf_calibrate` is off: a small judge puts most of its mass on one
  answer whatever the prompt says (a label prior), so every rule would get the same
  category. The prior is measured once per prompt template on a content-free prompt (every
  slot filled with "N/A") and the label is argmax_a [loglik(a | prompt) - loglik(a |
  content-free prompt)]. This is Zhao et al.'s diagonal correction W = diag(p_cf)^-1: the
  normalisers over the answers are common to all answers and drop out of the argmax.
- A rule's Relation/Intuition is no free-text rationale (the label is not generated):
  it states how the label was chosen and the per-answer scores behind it.
- A summary's body is generated greedily, at most `hf_max_new_tokens` tokens.
The synthesised answer then goes through the same parser and cache as a remote judge's.
Scoring shares the prompt template's KV cache across items and scores all answers of a
label in one forward (sal.judge.loglik).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import threading
from typing import Any, Callable, NamedTuple, Optional, Sequence

from tqdm.auto import tqdm

from sal.config.judge import JudgeConfig
from sal.hardware import resolve_dtype
from sal.judge.base import Completion, PromptJudge
from sal.judge.loglik import AnswerScorer
from sal.judge.parse import CATEGORIES, DECISIONS
from sal.judge.prompts import rule_prompt, verify_prompt
from sal.judge.types import EXPLAIN, RULE, VERIFY, JudgeItem

Loader = Callable[[], tuple[Any, Any]]

SUMMARY_KINDS_TEXT = ("Exact pattern:", "Semantic:", "Cannot Tell")

CONTENT_FREE = "N/A"
"""Slot filler of the content-free prompts used for calibration (Zhao et al. use "N/A")."""

VERIFY_PREFIX = "Final Decision: [["
RULE_PREFIX = '<judgement> {"Category": "'


class Label(NamedTuple):
    """A label chosen by log-likelihood, with the evidence for it."""

    index: int
    """Index of the chosen answer."""
    scores: tuple[float, ...]
    """Per answer: summed log-likelihood, minus the content-free one when calibrated."""
    calibrated: bool


def content_free_prompt(item: JudgeItem) -> str:
    """The item's prompt template with every slot filled with "N/A" (same number of
    premises, same number of spans), the input of Zhao et al.'s calibration."""
    if item.task == RULE:
        # Items built by rule_item carry their premises; a bare item is read off its prompt.
        n_premise = len(item.premises) or (2 if "**Second Premise (P2)**" in item.prompt else 1)
        return rule_prompt([CONTENT_FREE] * n_premise, CONTENT_FREE)
    if item.task == VERIFY:
        n_span = len(item.spans) or max(1, item.prompt.count("\nSpan "))
        return verify_prompt(CONTENT_FREE, [CONTENT_FREE] * n_span)
    raise ValueError(f"no content-free prompt for judge task {item.task!r} (only rule and verify are calibrated)")


def scores_text(names: Sequence[str], label: Label) -> str:
    """The truthful "rationale" of a log-likelihood label: how it was chosen, and the scores."""
    if label.calibrated:
        head = "log-likelihood label (calibrated); margins over the content-free prompt"
    else:
        head = "log-likelihood label (uncalibrated); log-likelihoods"
    return head + ": " + ", ".join(f"{n}={v:+.2f}" for n, v in zip(names, label.scores))


def load_from_config(config: JudgeConfig) -> tuple[Any, Any]:
    """Load `hf_model` (hub id or directory; `hf_gguf_file` for GGUF weights)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if not config.hf_model:
        raise ValueError(
            "judge.hf_model is empty: name a model directory or hub id for the hf_local judge, "
            "or pass an already loaded model/tokenizer (or a loader) to make_judge"
        )
    kwargs = {"gguf_file": config.hf_gguf_file} if config.hf_gguf_file else {}
    tokenizer = AutoTokenizer.from_pretrained(config.hf_model, **kwargs)
    dtype = resolve_dtype(config.hf_dtype, config.hf_device)
    model = AutoModelForCausalLM.from_pretrained(config.hf_model, dtype=getattr(torch, dtype), **kwargs)
    return model.to(config.hf_device).eval(), tokenizer


def weights_fingerprint(model: Any) -> str:
    """Identity of an unnamed in-memory model for cache keys: a hash of its weights."""
    import torch

    h = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(tensor.detach().to("cpu").contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return "sha256:" + h.hexdigest()[:16]


class HFLocalJudge(PromptJudge):
    backend = "hf_local"
    deterministic = True

    def __init__(
        self,
        config: JudgeConfig,
        model: Any = None,
        tokenizer: Any = None,
        loader: Optional[Loader] = None,
        model_id: Optional[str] = None,
        cache_root=None,
    ):
        if (model is None) != (tokenizer is None):
            raise ValueError("pass both model and tokenizer to the hf_local judge, or neither")
        if loader is not None and model is None and not model_id and not config.hf_model and config.cache_dir:
            raise ValueError(
                "an hf_local judge built from a loader needs model_id= (or judge.hf_model) to name the "
                "model in its cache keys; otherwise answers of different models would be mixed up"
            )
        self._model, self._tokenizer = model, tokenizer
        self._loader: Loader = loader or (lambda: load_from_config(config))
        self._explicit_id = model_id
        self._lock = threading.Lock()
        self._id: Optional[str] = None
        self._scorer: Optional[AnswerScorer] = None
        self._answered: dict[tuple[str, str], Completion] = {}
        """Answers computed in batches by ajudge, by (task, prompt), until _complete takes them."""
        self._priors: dict[tuple, tuple[float, ...]] = {}
        """Content-free log-likelihoods per (content-free prompt, prefix, answers): one
        forward pass per prompt template for the judge's lifetime."""
        super().__init__(config, cache_root)

    # -- identity ------------------------------------------------------------------------
    @property
    def model_id(self) -> str:
        if self._explicit_id:
            return self._explicit_id
        if self.config.hf_model:
            return self.config.hf_model + (f"::{self.config.hf_gguf_file}" if self.config.hf_gguf_file else "")
        if self._model is not None:
            if self._id is None:
                name = getattr(getattr(self._model, "config", None), "_name_or_path", "") or ""
                self._id = name or weights_fingerprint(self._model)
            return self._id
        return "hf_local:<loader>"

    @property
    def cache_params(self) -> dict:
        c = self.config
        return {
            "method": "loglik-label+scores-rationale+greedy-summary",
            # Calibrated and uncalibrated labels differ: they must never share a cache record.
            "calibration": f"content-free:{CONTENT_FREE}" if c.hf_calibrate else "none",
            "max_new_tokens": c.hf_max_new_tokens,
            "chat_template": c.hf_use_chat_template,
            # bf16 and fp32 log-likelihoods can order close answers differently.
            "dtype": self._dtype_name(),
        }

    def _dtype_name(self) -> str:
        if self._model is not None:
            return str(next(self._model.parameters()).dtype).removeprefix("torch.")
        return resolve_dtype(self.config.hf_dtype, self.config.hf_device)

    # -- inference -----------------------------------------------------------------------
    def _ensure_loaded(self) -> None:
        if self._model is None:
            self._model, self._tokenizer = self._loader()
            self._model.eval()
            if self.tally.model in ("hf_local:<loader>",):
                self.tally.model = self.model_id

    def _context_ids(self, prompt: str) -> list[int]:
        tok = self._tokenizer
        if self.config.hf_use_chat_template and getattr(tok, "chat_template", None):
            text = tok.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False, add_generation_prompt=True)
            return list(tok(text, add_special_tokens=False)["input_ids"])
        return list(tok(prompt + "\n", add_special_tokens=True)["input_ids"])

    def _encode(self, text: str) -> list[int]:
        return list(self._tokenizer(text, add_special_tokens=False)["input_ids"])

    @property
    def scorer(self) -> AnswerScorer:
        self._ensure_loaded()
        if self._scorer is None or self._scorer.model is not self._model:
            self._scorer = AnswerScorer(self._model)
        return self._scorer

    def _choice_logliks(self, prompts: Sequence[str], prefix: str, choices: Sequence[str]) -> list[list[float]]:
        """Summed log-likelihood of each choice after each prompt and the forced prefix,
        [len(prompts)][len(choices)], all prompts in one batch."""
        scorer = self.scorer
        contexts = [self._context_ids(p) + self._encode(prefix) for p in prompts]
        return scorer.score(contexts, [self._encode(c) for c in choices])

    def _labels(self, items: Sequence[JudgeItem], prefix: str, choices: Sequence[str]) -> list[Label]:
        """Argmax over the choices per item, calibrated against the content-free prompt when
        `hf_calibrate` is on (see the module docstring)."""
        calibrate = self.config.hf_calibrate
        all_scores = self._choice_logliks([item.prompt for item in items], prefix, choices)
        labels = []
        for item, scores in zip(items, all_scores):
            if calibrate:
                free = content_free_prompt(item)
                key = (free, prefix, tuple(choices))
                if key not in self._priors:
                    self._priors[key] = tuple(self._choice_logliks([free], prefix, choices)[0])
                scores = [s - p for s, p in zip(scores, self._priors[key])]
            best = max(range(len(choices)), key=scores.__getitem__)  # first on ties
            labels.append(Label(best, tuple(scores), calibrate))
        return labels

    def _greedy(self, logprobs_last, cache, stop: tuple[str, ...]) -> tuple[str, int]:
        """Greedy continuation until a stop string, EOS or the token budget."""
        eos = self._tokenizer.eos_token_id
        eos_ids = set(eos if isinstance(eos, list) else [eos]) - {None}
        out: list[int] = []
        text = ""
        for _ in range(self.config.hf_max_new_tokens):
            nxt = int(logprobs_last.argmax())
            if nxt in eos_ids:
                break
            out.append(nxt)
            text = self._tokenizer.decode(out, skip_special_tokens=True)
            if any(s in text for s in stop):
                break
            logprobs_last = self.scorer.extend([nxt], cache)
        for s in stop:
            text = text.split(s, 1)[0]
        return text.strip(), len(out)

    def _answer(self, items: Sequence[JudgeItem]) -> list[Completion]:
        import torch

        threads = torch.get_num_threads()
        with self._lock, torch.inference_mode():
            if self.config.hf_threads is not None:
                torch.set_num_threads(self.config.hf_threads)
            try:
                self._ensure_loaded()
                out: dict[str, Completion] = {}
                # One batched forward per prompt template: its rows share the template's head
                # (and the task fixes the forced prefix and the answers).
                templates: dict[str, list[JudgeItem]] = {}
                for item in items:
                    if item.task in (RULE, VERIFY):
                        templates.setdefault(content_free_prompt(item), []).append(item)
                for batch in templates.values():
                    out.update(zip((i.key for i in batch), self._answer_labelled(batch[0].task, batch)))
                for item in items:
                    if item.task not in (RULE, VERIFY):
                        out[item.key] = self._answer_generated(item)
                return [out[item.key] for item in items]
            finally:
                torch.set_num_threads(threads)

    def _answer_labelled(self, task: str, items: Sequence[JudgeItem]) -> list[Completion]:
        if task == VERIFY:
            labels = self._labels(items, VERIFY_PREFIX, [d + "]]" for d in DECISIONS])
            return [Completion(f"{VERIFY_PREFIX}{DECISIONS[label.index]}]]", self._n_prompt_tokens(item), 1,
                               {"label_scores": scores_text(DECISIONS, label)}) for item, label in zip(items, labels)]
        labels = self._labels(items, RULE_PREFIX, [c + '"' for c in CATEGORIES])
        out = []
        for item, label in zip(items, labels):
            answer = {"Category": CATEGORIES[label.index], "Relation/Intuition": scores_text(CATEGORIES, label)}
            out.append(Completion(f"<judgement> {json.dumps(answer, ensure_ascii=False)} </judgement>",
                                  self._n_prompt_tokens(item), 1))
        return out

    def _n_prompt_tokens(self, item: JudgeItem) -> int:
        return len(self._context_ids(item.prompt))

    def _answer_generated(self, item: JudgeItem) -> Completion:
        ctx = self._context_ids(item.prompt)
        if item.task == EXPLAIN:
            scorer = self.scorer
            context = ctx + self._encode("<summary> ")
            kinds = [self._encode(k) for k in SUMMARY_KINDS_TEXT]
            scores = scorer.score([context], kinds)[0]
            i = max(range(len(kinds)), key=scores.__getitem__)  # first on ties
            kind = SUMMARY_KINDS_TEXT[i]
            if kind == "Cannot Tell":
                return Completion("<summary> Cannot Tell </summary>", len(ctx), 1)
            last, cache = scorer.prompt(context + kinds[i])
            body, n = self._greedy(last, cache, stop=("</summary>", "\n"))
            return Completion(f"<summary> {kind} {body} </summary>", len(ctx), n + 1)
        raise ValueError(f"unknown judge task {item.task!r}")

    async def ajudge(self, items: Sequence[JudgeItem], *, progress: bool = True, desc: str = "judge"):
        """Answer every item not in the cache first, `hf_batch_size` at a time (items of one
        prompt template together, in prompt order, so that a batch shares a long head),
        then let the common path read them back, cache them and parse them."""
        items = list(items)
        todo: dict[tuple[str, str], JudgeItem] = {}
        for item in items:
            if self.cache is None or self.cache.get(self._key(item, 0)) is None:
                todo.setdefault((item.task, item.prompt), item)
        order = sorted(todo.values(), key=lambda i: (i.task, content_free_prompt(i) if i.task in (RULE, VERIFY) else "",
                                                     i.prompt))
        size = self.config.hf_batch_size
        with tqdm(total=len(order), desc=desc, disable=not progress, leave=False) as bar:
            for start in range(0, len(order), size):
                batch = order[start:start + size]
                for item, completion in zip(batch, self._answer(batch)):
                    self._answered[(item.task, item.prompt)] = completion
                bar.update(len(batch))
                await asyncio.sleep(0)  # a cancelled judge stops between batches
            try:
                return await super().ajudge(items, progress=False, desc=desc)
            finally:
                self._answered.clear()

    async def _complete(self, item: JudgeItem, sample: int) -> Completion:
        """The answer computed by `ajudge`'s batches (or, for a parse retry or a direct
        call, computed now). Runs on the event loop's thread, not asyncio.to_thread: every
        new thread that calls torch starts its own OpenMP pool whose spinning workers then
        slow every later forward pass."""
        self.tally.n_requests += 1
        completion = self._answered.pop((item.task, item.prompt), None) or self._answer([item])[0]
        self.tally.prompt_tokens += completion.prompt_tokens
        self.tally.completion_tokens += completion.completion_tokens
        return completion
