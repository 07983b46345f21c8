"""Build the configured judge backend."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

from sal.config.judge import JudgeConfig
from sal.judge.base import Judge


def make_judge(
    config: JudgeConfig,
    *,
    run_dir: Optional[str | Path] = None,
    model: Any = None,
    tokenizer: Any = None,
    loader: Any = None,
    model_id: Optional[str] = None,
) -> Judge:
    """The judge named by `config.backend`.

    run_dir: a relative `config.cache_dir` is resolved against it (absolute ones are used
    as they are). model/tokenizer/loader/model_id: hf_local only, an already loaded
    causal LM and tokenizer, or a zero-argument callable returning (model, tokenizer);
    without them the model is loaded from `config.hf_model` on first use."""
    cache_root = None
    if config.cache_dir:
        cache_root = Path(config.cache_dir)
        if run_dir is not None and not cache_root.is_absolute():
            cache_root = Path(run_dir) / cache_root
    if config.backend == "openai":
        from sal.judge.openai_http import OpenAIJudge

        return OpenAIJudge(config, cache_root=cache_root)
    if config.backend == "hf_local":
        from sal.judge.hf_local import HFLocalJudge

        return HFLocalJudge(config, model=model, tokenizer=tokenizer, loader=loader, model_id=model_id, cache_root=cache_root)
    if config.backend == "lexical":
        from sal.judge.lexical import LexicalJudge

        return LexicalJudge(config)
    if config.backend == "replay":
        from sal.judge.replay import ReplayJudge

        return ReplayJudge(config)
    raise ValueError(f"judge.backend={config.backend!r} is unknown")  # JudgeConfig refuses other backends when built
