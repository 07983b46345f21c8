"""Configuration of the LLM judge (feature explanation, verification, rule soundness) and of
the feature-interpretation stage that uses it (paper Section 2.2, Appendix C.2 and D)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional
from urllib.parse import urlsplit

from sal.config.choices import ActivationUnit, JudgeBackend, ModelDtype, coerce_choices
from sal.config.paths import launch_path  # noqa: F401  (registers ${sal.abspath:})


def base_url_problem(url: str) -> Optional[str]:
    """Why `url` cannot be an OpenAI-compatible base URL (None when it can)."""
    example = 'give a full URL such as "http://127.0.0.1:8000/v1" or "https://api.deepseek.com/v1"'
    if not isinstance(url, str) or not url.lower().startswith(("http://", "https://")):
        return example
    try:
        parts = urlsplit(url)
        parts.port  # raises on a port that is not a number in range
    except ValueError as err:
        return f"{err}; {example}"
    if not parts.hostname:
        return f"no host name; {example}"
    if parts.query or parts.fragment:
        return f"no query or fragment allowed (requests go to base_url + \"/chat/completions\"); {example}"
    return None


@dataclass
class JudgeConfig:
    """Which judge answers the paper's prompts (Figures 7-10), and how it is called.

    The API key itself is never part of this config: only the *name* of the environment
    variable that holds it (`api_key_env`), so dumping the config (Hydra YAML, W&B) can
    never leak it.
    """

    backend: JudgeBackend = JudgeBackend.lexical
    """One of "openai" (any OpenAI-compatible HTTP server: DeepSeek API, vLLM, Ollama),
    "hf_local" (a local transformers causal LM), "lexical" (deterministic token patterns,
    no model; cannot judge rules) or "replay" (answers read from `replay_path`)."""

    base_url: str = "https://api.deepseek.com/v1"
    """Base URL of the OpenAI-compatible API; requests go to base_url + "/chat/completions".
    For a local vLLM server use e.g. "http://127.0.0.1:8000/v1"."""

    model: str = "deepseek-reasoner"
    """Model name sent in the request body (the paper uses DeepSeek-R1)."""

    api_key_env: Optional[str] = "DEEPSEEK_API_KEY"
    """Name of the environment variable holding the API key (sent as a Bearer token).
    None for servers without authentication. The key is read at request time only."""

    temperature: float = 0.1
    """Sampling temperature (paper Appendix D: 0.1)."""

    top_p: float = 0.9
    """Nucleus sampling mass (paper Appendix D: 0.9)."""

    max_tokens: Optional[int] = None
    """Completion token limit; None sends no limit (the paper does not restrict the
    generation length, so that the judge's reasoning is not cut short)."""

    concurrency: int = 32
    """Maximum number of HTTP requests in flight at once. When requests keep timing out
    (3 in a row with no answer between), the judge halves the number it keeps in flight,
    down to 1, and says so in a warning: a server that queues requests (one slot, many
    clients) then answers them instead of letting them expire in its queue."""

    stream: bool = True
    """Ask for a streamed answer (``"stream": true``, server-sent events): every token that
    arrives, reasoning included, shows the request is alive, so a stall is detected after
    `read_timeout_s` of silence instead of after the whole `timeout_s`. False sends one
    plain JSON request and reads one JSON body (for a server that cannot stream)."""

    connect_timeout_s: float = 10.0
    """Seconds to open a connection (DNS, TCP, TLS). Short: a server that cannot be reached
    is known at once, not after a whole generation's time."""

    read_timeout_s: float = 180.0
    """Read-idle timeout in seconds: the longest silence allowed while waiting for the next
    bytes of an answer (the first ones included, so it also bounds time spent in the
    server's queue). Streamed answers send bytes all along; a non-streamed one sends
    nothing until it is complete, so raise this with stream=false."""

    timeout_s: float = 600.0
    """Overall cap on one request in seconds, from sending it to the last byte of the answer,
    however steadily bytes arrive. R1 reasoning on a rule can take minutes, hence the
    generous default."""

    max_retries: int = 6
    """Retries of one request after a 429, 5xx, timeout, dropped connection or malformed
    body; after that the item is reported as failed (never given a default label)."""

    max_connect_failures: int = 16
    """After this many connection attempts in a row fail (refused, DNS, TLS, connect
    timeout) with no answer from the server between them, the batch stops with one error
    naming the URL and the cause, instead of trying every item in turn. Answers already
    received are in the cache, so a rerun resumes."""

    retry_after_max_s: float = 120.0
    """Longest wait honoured from a server's Retry-After header (429/503). A longer request
    (``Retry-After: 3600``) is cut to this, with a warning."""

    backoff_base_s: float = 1.0
    """First back-off delay in seconds; doubles on each retry, with random jitter."""

    backoff_max_s: float = 60.0
    """Upper bound of one exponential back-off delay. A server's Retry-After header is
    honoured when it is longer, up to `retry_after_max_s`."""

    max_parse_retries: int = 2
    """How many fresh answers to request when an answer cannot be parsed, before the item
    is recorded as unparseable."""

    cache_dir: Optional[str] = "judge_cache"
    """Directory of the on-disk judgment cache (one file per sha256 key, sharded); relative
    paths are taken relative to the run directory by the caller. None disables caching.
    The conf/judge groups put it under ``paths.cache_dir`` made absolute against the
    directory the run was launched from (``${sal.abspath:...}``), so that every run shares
    it even when $SAL_CACHE is a relative path."""

    replay_path: Optional[str] = None
    """CSV or JSONL file answering items for the "replay" backend (human labels or another
    run's exported judgments)."""

    price_per_1k_prompt: float = 0.0
    """Price in USD per 1,000 prompt tokens, for the cost estimate in the report."""

    price_per_1k_completion: float = 0.0
    """Price in USD per 1,000 completion tokens (reasoning tokens included), for the cost
    estimate in the report."""

    hf_model: Optional[str] = None
    """hf_local: hub id or local directory of the causal LM (ignored when the caller passes
    an already loaded model or a loader). Also its identity in the cache key."""

    hf_gguf_file: Optional[str] = None
    """hf_local: GGUF file name inside `hf_model`, when the weights ship as GGUF."""

    hf_device: str = "cpu"
    """hf_local: torch device for the local judge model."""

    hf_dtype: ModelDtype = ModelDtype.auto
    """hf_local: dtype of the judge model: auto | float32 | bfloat16 | float16. auto is
    bfloat16 on a GPU or a CPU with native bf16 and float32 elsewhere (sal.hardware);
    validation replaces it by the resolved name."""

    hf_max_new_tokens: int = 48
    """hf_local: greedy-generation budget for an explanation's text (labels are chosen by
    log-likelihood, not generated; a rule's rationale records the label's scores)."""

    hf_calibrate: bool = True
    """hf_local: contextual calibration of rule categories and verification decisions
    (Zhao et al., 2021, "Calibrate Before Use"). A small judge (e.g. SmolLM2-135M) has a
    strong label prior: it prefers the same answer whatever the prompt says, so nearly
    every rule gets one category and SAL (a divergence between per-category histograms)
    is undefined. When on, each answer's log-likelihood is measured against its
    log-likelihood under a content-free prompt (same template, slots "N/A") and the
    label is the answer with the largest difference. False keeps the raw argmax of
    log-likelihood. Part of the cache key: calibrated and raw labels never mix."""

    hf_batch_size: int = 8
    """hf_local: rules (or verifications) scored in one batched forward. Batching pays on
    CPUs as on GPUs: one forward over 8 prompts costs far less than 8 forwards. Labels do
    not depend on it."""

    hf_threads: Optional[int] = None
    """hf_local: torch intra-op threads while the judge runs (restored afterwards); 1 is
    much faster for small judge models on a busy CPU. None leaves torch's setting alone."""

    hf_use_chat_template: bool = True
    """hf_local: wrap the prompt in the tokenizer's chat template (user turn) when it has
    one."""

    lexical_max_ngram: int = 3
    """lexical: longest token n-gram (ending at the activating token) tried as a pattern."""

    lexical_min_share: float = 0.5
    """lexical: a pattern must end at least this share of the explained spans to be reported
    as "Exact pattern"; otherwise the explanation is "Cannot Tell"."""

    def __post_init__(self) -> None:
        # Imported here: sal.judge's package imports this module.
        from sal.errors import ConfigError
        from sal.judge.secrets import REDACTED, env_key_problem, redact

        def bad(field: str, value, fix: str) -> ConfigError:  # a ValueError too
            return ConfigError(f"judge.{field}={value!r} is invalid: {fix}")

        coerce_choices(self, "judge")
        if self.backend == "openai":
            url_problem = base_url_problem(self.base_url)
            if url_problem:
                raise bad("base_url", redact(self.base_url), url_problem)
            if not self.model:
                raise bad("model", self.model, "name the model the server should run")
        if self.backend == "replay" and not self.replay_path:
            raise bad("replay_path", self.replay_path, "the replay backend needs a CSV/JSONL file of answers")
        key_problem = env_key_problem(self.api_key_env)
        if key_problem:
            raise bad("api_key_env", REDACTED, key_problem)
        if not 0.0 <= self.temperature <= 2.0:
            raise bad("temperature", self.temperature, "use a value in [0, 2] (paper: 0.1)")
        if not 0.0 < self.top_p <= 1.0:
            raise bad("top_p", self.top_p, "use a value in (0, 1] (paper: 0.9)")
        if self.max_tokens is not None and self.max_tokens < 1:
            raise bad("max_tokens", self.max_tokens, "use a positive integer or null for no limit")
        if self.concurrency < 1:
            raise bad("concurrency", self.concurrency, "use at least 1")
        for name in ("connect_timeout_s", "read_timeout_s", "timeout_s", "retry_after_max_s"):
            value = getattr(self, name)
            if not (value > 0 and math.isfinite(value)):
                raise bad(name, value, "use a positive number of seconds")
        if self.max_retries < 0:
            raise bad("max_retries", self.max_retries, "use 0 or more")
        if self.max_connect_failures < 1:
            raise bad("max_connect_failures", self.max_connect_failures, "use at least 1")
        if self.backoff_base_s < 0 or self.backoff_max_s < self.backoff_base_s:
            raise bad("backoff_max_s", self.backoff_max_s, "need 0 <= backoff_base_s <= backoff_max_s")
        if self.max_parse_retries < 0:
            raise bad("max_parse_retries", self.max_parse_retries, "use 0 or more")
        if self.price_per_1k_prompt < 0 or self.price_per_1k_completion < 0:
            raise bad("price_per_1k_prompt", self.price_per_1k_prompt, "prices cannot be negative")
        if self.hf_max_new_tokens < 1:
            raise bad("hf_max_new_tokens", self.hf_max_new_tokens, "use a positive integer")
        if self.hf_batch_size < 1:
            raise bad("hf_batch_size", self.hf_batch_size, "use a positive number of items")
        if self.hf_threads is not None and self.hf_threads < 1:
            raise bad("hf_threads", self.hf_threads, "use a positive thread count or null")
        if self.lexical_max_ngram < 1:
            raise bad("lexical_max_ngram", self.lexical_max_ngram, "use at least 1")
        if not 0.0 < self.lexical_min_share <= 1.0:
            raise bad("lexical_min_share", self.lexical_min_share, "use a share in (0, 1]")


@dataclass
class InterpretConfig:
    """Feature interpretation (paper Appendix C.2): collect each feature's top activating
    spans over the corpus, explain with the top 15, verify with the top 30."""

    top_k: int = 30
    """Spans kept per feature (streaming top-k) and shown to the verifier (Figure 8)."""

    explain_top: int = 15
    """Spans shown to the explainer (Figure 7)."""

    min_activations: int = 30
    """A feature is "sufficiently activated", hence interpreted, when it fires in at least
    this many documents of the corpus (activation_unit)."""

    activation_unit: ActivationUnit = ActivationUnit.documents
    """What min_activations counts: documents (a feature counts once per document it fires
    in; Appendix C.2's "over 30 times, an occurrence probability of 0.02%" is 30 of its 128K
    documents) | tokens (every token it fires on)."""

    span_window: int = 32
    """Tokens per span: a window of text ending at (and including) the activating token."""

    tau: float = 0.0
    """Activation threshold: a feature fires on a token when its activation (max over the
    crosscoder's layers) exceeds tau. Keep equal to the rule counter's tau."""

    def __post_init__(self) -> None:
        coerce_choices(self, "interpret")

        def bad(field: str, value, fix: str) -> ValueError:
            return ValueError(f"interpret.{field}={value!r} is invalid: {fix}")

        if self.top_k < 1:
            raise bad("top_k", self.top_k, "use at least 1 (paper: 30)")
        if not 1 <= self.explain_top <= self.top_k:
            raise bad("explain_top", self.explain_top, f"use a value in [1, top_k={self.top_k}] (paper: 15)")
        if self.min_activations < 1:
            raise bad("min_activations", self.min_activations, "use at least 1 (paper: 30)")
        if self.span_window < 1:
            raise bad("span_window", self.span_window, "use at least 1 token")
        if not math.isfinite(self.tau):
            raise bad("tau", self.tau, "use a finite threshold")
