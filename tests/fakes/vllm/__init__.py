"""A stand-in for vLLM's offline inference API, for tests on machines without a GPU.

Same names and signatures as the real package's (vllm.LLM, vllm.SamplingParams and the
RequestOutput / CompletionOutput it returns), checked against vLLM's documentation:
`LLM(model, ..., tensor_parallel_size, dtype, seed, gpu_memory_utilization, ...)`,
`LLM.generate(prompts, sampling_params, use_tqdm, ...)` with one SamplingParams or one per
prompt, `CompletionOutput.finish_reason` "stop" (EOS or a stop string) or "length", and
`stop_reason` the matched stop string. The text is made up: each prompt gets a deterministic
answer of a prompt-dependent number of words ("tokens"), ending in "</answer>".

Environment, for tests:
- FAKE_VLLM_LOG: append one JSON line per LLM() and per generate() (pid, RANK, arguments, and
  the transformers models alive in this process, to show that no HF model was loaded).
- FAKE_VLLM_KILL_AT: SIGKILL this process at the start of its N-th generate() call.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import sys
from dataclasses import dataclass, field
from typing import Any, List, Optional, Sequence, Union

__version__ = "0.0.0+fake"
_calls = 0


def _log(event: dict) -> None:
    path = os.environ.get("FAKE_VLLM_LOG")
    if path:
        event = dict(event, pid=os.getpid(), rank=os.environ.get("RANK"), hf_models_alive=_hf_models_alive())
        with open(path, "a") as f:
            f.write(json.dumps(event) + "\n")


def _hf_models_alive() -> list:
    """Class names of the transformers models that exist in this process."""
    import gc

    modeling_utils = sys.modules.get("transformers.modeling_utils")
    if modeling_utils is None:  # PreTrainedModel was never imported: no model can exist
        return []
    return sorted({type(o).__name__ for o in gc.get_objects() if isinstance(o, modeling_utils.PreTrainedModel)})


class SamplingParams:
    def __init__(self, n: int = 1, presence_penalty: float = 0.0, frequency_penalty: float = 0.0,
                 repetition_penalty: float = 1.0, temperature: float = 1.0, top_p: float = 1.0, top_k: int = -1,
                 min_p: float = 0.0, seed: Optional[int] = None, stop: Optional[Union[str, List[str]]] = None,
                 stop_token_ids: Optional[List[int]] = None, include_stop_str_in_output: bool = False,
                 ignore_eos: bool = False, max_tokens: Optional[int] = 16, min_tokens: int = 0,
                 logprobs: Optional[int] = None, skip_special_tokens: bool = True, **kwargs: Any) -> None:
        if max_tokens is not None and max_tokens < 1:
            raise ValueError(f"max_tokens must be at least 1, got {max_tokens}.")
        if not 0.0 < top_p <= 1.0:
            raise ValueError(f"top_p must be in (0, 1], got {top_p}.")
        self.n, self.temperature, self.top_p, self.top_k, self.seed = n, temperature, top_p, top_k, seed
        self.stop = [stop] if isinstance(stop, str) else list(stop or [])
        self.stop_token_ids = list(stop_token_ids or [])
        self.include_stop_str_in_output, self.ignore_eos = include_stop_str_in_output, ignore_eos
        self.max_tokens, self.min_tokens = max_tokens, min_tokens


@dataclass
class CompletionOutput:
    index: int
    text: str
    token_ids: Sequence[int]
    cumulative_logprob: Optional[float]
    logprobs: Optional[Any]
    finish_reason: Optional[str] = None
    stop_reason: Union[int, str, None] = None

    def finished(self) -> bool:
        return self.finish_reason is not None


@dataclass
class RequestOutput:
    request_id: str
    prompt: Optional[str]
    prompt_token_ids: Optional[List[int]]
    prompt_logprobs: Optional[Any]
    outputs: List[CompletionOutput]
    finished: bool
    metrics: Optional[Any] = field(default=None)


class LLM:
    def __init__(self, model: str, tokenizer: Optional[str] = None, tokenizer_mode: str = "auto",
                 skip_tokenizer_init: bool = False, trust_remote_code: bool = False, tensor_parallel_size: int = 1,
                 dtype: str = "auto", quantization: Optional[str] = None, revision: Optional[str] = None,
                 tokenizer_revision: Optional[str] = None, seed: int = 0, gpu_memory_utilization: float = 0.9,
                 swap_space: float = 4, cpu_offload_gb: float = 0, enforce_eager: bool = False, **kwargs: Any) -> None:
        self.model = model
        _log({"event": "init", "model": model, "dtype": dtype, "seed": seed,
              "gpu_memory_utilization": gpu_memory_utilization, "tensor_parallel_size": tensor_parallel_size})

    def generate(self, prompts: Union[str, Sequence[str], None] = None,
                 sampling_params: Union[SamplingParams, Sequence[SamplingParams], None] = None,
                 use_tqdm: bool = True, lora_request: Any = None, **kwargs: Any) -> List[RequestOutput]:
        global _calls
        _calls += 1
        if os.environ.get("FAKE_VLLM_KILL_AT") == str(_calls):
            os.kill(os.getpid(), signal.SIGKILL)
        prompts = [prompts] if isinstance(prompts, str) else list(prompts or [])
        params = sampling_params if isinstance(sampling_params, (list, tuple)) else [sampling_params or SamplingParams()] * len(prompts)
        if len(params) != len(prompts):
            raise ValueError("The lengths of prompts and sampling_params must be the same.")
        _log({"event": "generate", "n_prompts": len(prompts),
              "params": [{"max_tokens": p.max_tokens, "stop": p.stop, "include_stop_str_in_output":
                          p.include_stop_str_in_output, "seed": p.seed} for p in params]})
        return [self._one(i, prompt, p) for i, (prompt, p) in enumerate(zip(prompts, params))]

    @staticmethod
    def _one(i: int, prompt: str, p: SamplingParams) -> RequestOutput:
        n_words = 3 + int(hashlib.sha256(prompt.encode()).hexdigest(), 16) % 12
        words = [f"step{k}" for k in range(n_words)] + ["</think>", "<answer>", "42", "</answer>", "and", "more"]
        text, reason, stop_reason = [], "length", None
        for w in words[: p.max_tokens]:
            if w in p.stop:
                if p.include_stop_str_in_output:
                    text.append(w)
                reason, stop_reason = "stop", w
                break
            text.append(w)
        out = CompletionOutput(0, " " + " ".join(text), list(range(len(text))), None, None, reason, stop_reason)
        return RequestOutput(str(i), prompt, None, None, [out], True)
