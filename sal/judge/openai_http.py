"""Judge behind any OpenAI-compatible chat-completions API (DeepSeek API, vLLM, Ollama)."""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import json
import logging
import math
import os
import random
import time
from typing import AsyncIterator, Optional

import httpx

from sal.config.judge import JudgeConfig
from sal.judge.base import Completion, PromptJudge, TransportError
from sal.judge.types import JudgeItem

log = logging.getLogger("sal.judge")
# httpx logs every request at INFO: thousands of lines per stage log. Its warnings still show.
logging.getLogger("httpx").setLevel(max(logging.getLogger("httpx").level, logging.WARNING))

CONNECTIONS_PER_CLIENT = 8

# 408 request timeout, 409 conflict (some gateways), 425 too early, 429 rate limit, 5xx.
RETRYABLE_STATUS = frozenset({408, 409, 425, 429}) | frozenset(range(500, 600))


class MalformedResponse(Exception):
    pass


def parse_retry_after(value: Optional[str]) -> Optional[float]:
    """Seconds to wait from a Retry-After header: delta-seconds (fractions accepted) or an
    HTTP date; None when absent or unreadable."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when is None:
        return None
    return max(0.0, when.timestamp() - time.time())


def read_completion(body: bytes) -> tuple[str, dict, Optional[str], Optional[str]]:
    """(content, usage, reasoning, finish_reason) from a chat-completions JSON body;
    MalformedResponse when the body is not one (truncated JSON, an HTML error page, no
    choices, no content)."""
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError) as err:
        raise MalformedResponse(f"body is not JSON ({err}); starts with {body[:80]!r}") from None
    try:
        message = data["choices"][0]["message"]
        content = message["content"]
    except (KeyError, IndexError, TypeError):
        raise MalformedResponse(f"no choices[0].message.content in body starting {body[:80]!r}") from None
    if not isinstance(content, str):
        raise MalformedResponse(f"choices[0].message.content is {type(content).__name__}, not a string")
    usage = data.get("usage") if isinstance(data.get("usage"), dict) else {}
    reasoning = message.get("reasoning_content") if isinstance(message, dict) else None
    finish = data["choices"][0].get("finish_reason") if isinstance(data["choices"][0], dict) else None
    return content, usage, reasoning if isinstance(reasoning, str) else None, finish if isinstance(finish, str) else None


class OpenAIJudge(PromptJudge):
    """POSTs each prompt as one user message to `base_url + "/chat/completions"`.

    At most `concurrency` requests are in flight (a queue of request slots taken around
    each HTTP call; back-off sleeps do not hold a slot). A request is retried up to `max_retries`
    times on 429 (waiting at least the Retry-After the server asks for), 408/409/425, 5xx,
    a timeout (`timeout_s` for the whole request), a dropped connection or a malformed body,
    with exponential back-off and jitter; other statuses (401, 400, 404...) fail at once.
    The API key is read from the environment variable named by `api_key_env` when a batch
    starts and lives only in the HTTP client's headers."""

    backend = "openai"

    def __init__(self, config: JudgeConfig, cache_root=None, transport: Optional[httpx.AsyncBaseTransport] = None):
        super().__init__(config, cache_root)
        self._transport = transport
        self._slots: Optional[asyncio.Queue] = None
        self._rng = random.Random()

    @property
    def workers(self) -> int:
        # More workers than slots, so that an item sleeping in back-off leaves its slot
        # to another item instead of idling it.
        return 2 * self.config.concurrency

    @property
    def cache_params(self) -> dict:
        c = self.config
        return {"temperature": c.temperature, "top_p": c.top_p, "max_tokens": c.max_tokens}

    @property
    def url(self) -> str:
        return self.config.base_url.rstrip("/") + "/chat/completions"

    def _headers(self) -> dict:
        headers = {"Content-Type": "application/json"}
        name = self.config.api_key_env
        if name is None:
            return headers
        key = os.environ.get(name)
        if not key:
            raise RuntimeError(
                f"environment variable {name} (judge.api_key_env) is not set: export the API key "
                f"there, or set judge.api_key_env=null for a server without authentication"
            )
        headers["Authorization"] = f"Bearer {key}"
        return headers

    @contextlib.asynccontextmanager
    async def _session(self) -> AsyncIterator[None]:
        """Open the HTTP clients and the pool of `concurrency` request slots.

        httpcore's connection pool rescans every connection (one poll() syscall each) on
        every request event, which costs O(connections) per event and dominated the CPU at
        32 connections. So the slots are spread over several small clients of at most
        CONNECTIONS_PER_CLIENT connections; each slot belongs to one client, so a client
        never has more requests than connections and nothing waits inside httpx."""
        c = self.config
        headers = self._headers()
        n_clients = math.ceil(c.concurrency / CONNECTIONS_PER_CLIENT)
        owners = [i % n_clients for i in range(c.concurrency)]
        async with contextlib.AsyncExitStack() as stack:
            clients = []
            for k in range(n_clients):
                size = owners.count(k)
                limits = httpx.Limits(max_connections=size, max_keepalive_connections=size)
                clients.append(await stack.enter_async_context(httpx.AsyncClient(
                    headers=headers, timeout=httpx.Timeout(c.timeout_s), limits=limits, transport=self._transport)))
            self._slots = asyncio.Queue()
            for k in owners:
                self._slots.put_nowait(clients[k])
            try:
                yield
            finally:
                self._slots = None

    def _backoff(self, attempt: int) -> float:
        """Exponential back-off with jitter: uniform in [d/2, d], d = base * 2**attempt."""
        c = self.config
        ceiling = min(c.backoff_max_s, c.backoff_base_s * (2 ** attempt))
        return ceiling * (0.5 + 0.5 * self._rng.random())

    def _body(self) -> dict:
        c = self.config
        body = {"model": c.model, "temperature": c.temperature, "top_p": c.top_p, "stream": False}
        if c.max_tokens is not None:
            body["max_tokens"] = c.max_tokens
        return body

    async def _complete(self, item: JudgeItem, sample: int) -> Completion:
        assert self._slots is not None, "use ajudge()/judge()"
        c = self.config
        body = {**self._body(), "messages": [{"role": "user", "content": item.prompt}]}
        errors: list[str] = []
        for attempt in range(c.max_retries + 1):
            wait: Optional[float] = None
            client = await self._slots.get()  # a free request slot (the concurrency limit)
            try:
                self.report.n_requests += 1
                if attempt:
                    self.report.n_retries += 1
                try:
                    response = await asyncio.wait_for(client.post(self.url, json=body), timeout=c.timeout_s)
                except (asyncio.TimeoutError, httpx.TimeoutException):
                    errors.append(f"timeout after {c.timeout_s:g} s")
                    response = None
                except httpx.TransportError as err:  # refused, reset, closed without response
                    errors.append(f"connection error ({type(err).__name__})")
                    response = None
            finally:
                self._slots.put_nowait(client)
            if response is not None:
                status = response.status_code
                if status == 200:
                    try:
                        content, usage, reasoning, finish = read_completion(response.content)
                    except MalformedResponse as err:
                        errors.append(f"malformed body: {err}")
                    else:
                        return self._account(content, usage, reasoning, finish)
                elif status in RETRYABLE_STATUS:
                    errors.append(f"HTTP {status}")
                    if status == 429 or status == 503:
                        wait = parse_retry_after(response.headers.get("retry-after"))
                else:
                    hint = " (check the key in the variable named by judge.api_key_env)" if status in (401, 403) else ""
                    raise TransportError(f"HTTP {status} from {self.url}{hint}: {response.text[:200]!r}")
            if attempt == c.max_retries:
                break
            delay = self._backoff(attempt)
            if wait is not None:
                delay = max(delay, wait)  # honour Retry-After in full
            log.debug("judge request for %s: %s; retry %d in %.2f s", item.key, errors[-1], attempt + 1, delay)
            await asyncio.sleep(delay)
        raise TransportError(f"gave up after {len(errors)} attempts: " + "; ".join(errors[-4:]))

    def _account(self, content: str, usage: dict, reasoning: Optional[str],
                 finish_reason: Optional[str] = None) -> Completion:
        prompt_tokens = int(usage.get("prompt_tokens") or 0)
        completion_tokens = int(usage.get("completion_tokens") or 0)
        if not usage:
            self.report.n_missing_usage += 1
        r = self.report
        r.prompt_tokens += prompt_tokens
        r.completion_tokens += completion_tokens
        r.cost_usd += (
            prompt_tokens / 1000 * self.config.price_per_1k_prompt
            + completion_tokens / 1000 * self.config.price_per_1k_completion
        )
        extra = {k: v for k, v in (("reasoning", reasoning), ("finish_reason", finish_reason)) if v} or None
        return Completion(content, prompt_tokens, completion_tokens, extra)
