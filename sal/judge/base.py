"""The judge interface and the machinery shared by model-backed judges (cache, parse
retries, concurrency, progress)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any, AsyncIterator, Awaitable, NamedTuple, Optional, Sequence, TypeVar

from tqdm.auto import tqdm

from sal.config.judge import JudgeConfig
from sal.judge.cache import JudgeCache, cache_key
from sal.judge.parse import parse_answer
from sal.judge.types import FAILED, OK, UNPARSEABLE, JudgeItem, JudgeTally, Judgment

log = logging.getLogger("sal.judge")
T = TypeVar("T")


class TransportError(Exception):
    """A request could not be completed (retries exhausted or a non-retryable status).
    Its message is shown to the user and must never contain the API key."""


class Completion(NamedTuple):
    """One raw answer from a model-backed judge."""

    text: str
    prompt_tokens: int = 0
    completion_tokens: int = 0
    extra: Optional[dict] = None
    """Backend-specific fields worth keeping in the cache record (e.g. R1's reasoning)."""


def run_sync(coro: Awaitable[T]) -> T:
    """Run a coroutine to completion from synchronous code, also when the caller is itself
    inside a running event loop (notebooks): then it runs on a fresh loop in a thread."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coro)
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["value"] = asyncio.run(coro)
        except BaseException as err:  # re-raised in the caller's thread
            box["error"] = err

    thread = threading.Thread(target=target, name="sal-judge-sync")
    thread.start()
    thread.join()
    if "error" in box:
        raise box["error"]
    return box["value"]


class Judge(ABC):
    """Answers JudgeItems. Construct through `sal.judge.make_judge(config)`.

    `ajudge(items)` (async) and `judge(items)` (sync) return one Judgment per item, in the
    input order. Every item ends with status "ok" (label set) or an explicit "failed",
    "unparseable" or "declined" with an error message; the same tally accumulates in
    `report` (tokens, cost, problems) across calls."""

    backend: str = "?"
    answers_by_prompt: bool = False
    """True when the answer depends on the prompt text alone (not on the item's identity, as
    a replay of human labels per rule does): then items with equal prompts are judged once."""

    def __init__(self, config: JudgeConfig):
        self.config = config
        self.tally = JudgeTally(backend=self.backend, model=self.model_id)

    @property
    def model_id(self) -> str:
        return self.config.model if self.backend == "openai" else self.backend

    @property
    def workers(self) -> int:
        """Items processed at once."""
        return 1

    @abstractmethod
    async def _judge_one(self, item: JudgeItem) -> Judgment:
        """Answer one item; may raise only for programming errors."""

    @contextlib.asynccontextmanager
    async def _session(self) -> AsyncIterator[None]:
        """Per-batch resources (an HTTP client bound to the running loop)."""
        yield

    async def ajudge(self, items: Sequence[JudgeItem], *, progress: bool = True, desc: str = "judge") -> list[Judgment]:
        items = list(items)
        seen: set[str] = set()
        for item in items:
            if item.key in seen:
                raise ValueError(f"duplicate judge item key {item.key!r}: keys must be unique within a batch")
            seen.add(item.key)
        results: list[Optional[Judgment]] = [None] * len(items)
        if not items:
            return []
        # Items that ask the same question (same task and prompt) are answered once.
        copies: dict[int, list[int]] = {}
        first_of: dict[tuple[str, str], int] = {}
        for i, item in enumerate(items):
            rep = first_of.setdefault((item.task, item.prompt), i) if self.answers_by_prompt else i
            copies.setdefault(rep, []).append(i)
        next_index = iter(copies)
        bar = tqdm(total=len(items), desc=desc, disable=not progress, leave=False)

        async def worker() -> None:
            for i in next_index:  # a shared iterator: each index goes to exactly one worker
                judgment = await self._judge_one(items[i])
                for j in copies[i]:
                    results[j] = judgment._replace(key=items[j].key)
                    self.tally.count(results[j])
                bar.update(len(copies[i]))

        try:
            async with self._session():
                tasks = [asyncio.ensure_future(worker()) for _ in range(min(self.workers, len(items)))]
                try:
                    await asyncio.gather(*tasks)
                finally:
                    for task in tasks:
                        task.cancel()
                    await asyncio.gather(*tasks, return_exceptions=True)
        finally:
            bar.close()
        missing = [items[i].key for i, r in enumerate(results) if r is None]
        if missing:  # cannot happen unless a worker died; refuse to return holes
            raise RuntimeError(f"judge lost {len(missing)} items, e.g. {missing[:3]}")
        log.info("%s (cumulative)", self.tally.summary())
        problems = [r for r in results if r.status != OK]
        if problems:
            log.warning(
                "%d of %d judge items not labelled (%s), e.g. %s: %s",
                len(problems), len(items),
                ", ".join(f"{s}={sum(r.status == s for r in problems)}" for s in sorted({r.status for r in problems})),
                problems[0].key, problems[0].error,
            )
        return results  # type: ignore[return-value]

    def judge(self, items: Sequence[JudgeItem], *, progress: bool = True, desc: str = "judge") -> list[Judgment]:
        """Synchronous wrapper of `ajudge`."""
        return run_sync(self.ajudge(items, progress=progress, desc=desc))


class PromptJudge(Judge):
    """A judge that reads the prompt and writes an answer (openai, hf_local): answers go
    through the on-disk cache, and an unparseable answer triggers up to
    `max_parse_retries` fresh answers (sample index 1, 2, ...) before the item is recorded
    as unparseable."""

    deterministic: bool = False
    """A deterministic backend would give the same unparseable answer again: no retries."""
    answers_by_prompt = True

    def __init__(self, config: JudgeConfig, cache_root: Optional[str | Path] = None):
        super().__init__(config)
        root = cache_root if cache_root is not None else config.cache_dir
        self.cache = JudgeCache(root) if root else None
        self._pending: dict[str, asyncio.Future] = {}
        """Requests in flight by cache key (see _complete_once)."""

    @property
    @abstractmethod
    def cache_params(self) -> dict:
        """Everything besides model and prompt that changes the answer (sampling params)."""

    @abstractmethod
    async def _complete(self, item: JudgeItem, sample: int) -> Completion:
        """Ask the model once; raise TransportError when it cannot be done."""

    async def _complete_once(self, item: JudgeItem, sample: int, key: str) -> Completion:
        """Ask the model for `key` unless the same question is already in flight (another
        batch of this judge on the same loop asking it): then wait for that answer instead
        of paying for it twice. The answer is cached before anyone else sees it."""
        while (pending := self._pending.get(key)) is not None:
            try:
                completion = await asyncio.shield(pending)
            except asyncio.CancelledError:
                if pending.cancelled():  # its owner was cancelled, not this item: ask ourselves
                    continue
                raise
            self.tally.n_shared += 1
            return completion
        future: asyncio.Future = asyncio.get_running_loop().create_future()
        self._pending[key] = future
        try:
            completion = await self._complete(item, sample)
            if self.cache is not None:
                record = {
                    "backend": self.backend, "model": self.model_id, "params": self.cache_params,
                    "task": item.task, "item": item.key, "sample": sample, "prompt": item.prompt,
                    "text": completion.text, "prompt_tokens": completion.prompt_tokens,
                    "completion_tokens": completion.completion_tokens, "created": time.time(),
                    **(completion.extra or {}),
                }
                # Off the event loop: an fsync must not stall the other requests.
                await asyncio.to_thread(self.cache.put, key, record)
        except asyncio.CancelledError:
            future.cancel()
            raise
        except BaseException as err:
            future.set_exception(err)
            future.exception()  # retrieved: no "never retrieved" warning when nobody waits
            raise
        else:
            future.set_result(completion)
            return completion
        finally:
            del self._pending[key]

    def _key(self, item: JudgeItem, sample: int) -> str:
        return cache_key(self.backend, self.model_id, {**self.cache_params, "task": item.task}, item.prompt, sample)

    async def _judge_one(self, item: JudgeItem) -> Judgment:
        n_samples = 1 if self.deterministic else 1 + self.config.max_parse_retries
        raw: Optional[str] = None
        finish: Optional[str] = None
        all_cached = True
        for sample in range(n_samples):
            if sample:
                self.tally.n_parse_retries += 1
            key = self._key(item, sample)
            record = self.cache.get(key) if self.cache is not None else None
            if record is not None:
                self.tally.n_cache_hits += 1
                raw = record.get("text")
                finish = record.get("finish_reason")
            else:
                all_cached = False
                try:
                    completion = await self._complete_once(item, sample, key)
                except TransportError as err:
                    return Judgment(item.key, item.task, FAILED, None, None, raw, str(err), sample, False)
                raw = completion.text
                finish = (completion.extra or {}).get("finish_reason")
            # An answer cut at the token limit is not an answer, whatever it happens to contain.
            parsed = None if finish == "length" else parse_answer(item.task, raw)
            if parsed is not None:
                return Judgment(item.key, item.task, OK, parsed[0], parsed[1], raw, None, sample + 1, all_cached)
        snippet = (raw or "")[-200:].replace("\n", " ")
        cut = " (cut at the token limit: finish_reason=length; raise judge.max_tokens)" if finish == "length" else ""
        return Judgment(
            item.key, item.task, UNPARSEABLE, None, None, raw,
            f"no parseable answer in {n_samples} attempt(s){cut}; last answer ends with: {snippet!r}",
            n_samples, all_cached,
        )
