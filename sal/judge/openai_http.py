"""Judge behind any OpenAI-compatible chat-completions API (DeepSeek API, vLLM, Ollama)."""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import errno
import json
import logging
import math
import os
import socket
import ssl
import time
from typing import AsyncIterator, Optional

import httpx
import tenacity

from sal.config.judge import JudgeConfig
from sal.errors import CredentialError, UnreachableError
from sal.judge.base import Completion, PromptJudge, TransportError
from sal.judge.secrets import redact
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


async def read_stream(lines: AsyncIterator[str]) -> tuple[str, dict, Optional[str], Optional[str]]:
    """(content, usage, reasoning, finish_reason) from a streamed chat completion: server-sent
    events ``data: {chunk}`` ending with ``data: [DONE]``. Content and reasoning
    (``reasoning_content``, DeepSeek/vLLM; ``reasoning``, others) are the concatenated deltas of
    choice 0; usage comes from whichever chunk carries it (the last one, with
    ``stream_options.include_usage``). MalformedResponse when an event is not JSON, the server
    reports an error inside the stream, or the stream ends before the answer is complete
    (neither a finish_reason nor [DONE]: a connection cut mid-answer must never become a
    shorter answer)."""
    content: list[str] = []
    reasoning: list[str] = []
    usage: dict = {}
    finish: Optional[str] = None
    done = False
    n_events = 0
    async for line in lines:
        if done or not line.startswith("data:"):
            continue  # blank separators, ": keep-alive" comments, event:/id: fields, after [DONE]
        data = line[5:].strip()
        if data == "[DONE]":
            done = True  # keep reading to the end of the body, so the connection can be reused
            continue
        try:
            chunk = json.loads(data)
        except ValueError:
            raise MalformedResponse(f"stream event is not JSON: {data[:80]!r}") from None
        if not isinstance(chunk, dict):
            raise MalformedResponse(f"stream event is not an object: {data[:80]!r}")
        if chunk.get("error"):
            raise MalformedResponse(f"server error inside the stream: {str(chunk['error'])[:200]}")
        n_events += 1
        if isinstance(chunk.get("usage"), dict):
            usage = chunk["usage"]
        for choice in chunk.get("choices") or ():
            if not isinstance(choice, dict) or choice.get("index", 0) != 0:
                continue
            delta = choice.get("delta") if isinstance(choice.get("delta"), dict) else {}
            if isinstance(delta.get("content"), str):
                content.append(delta["content"])
            thought = delta.get("reasoning_content", delta.get("reasoning"))
            if isinstance(thought, str):
                reasoning.append(thought)
            if isinstance(choice.get("finish_reason"), str):
                finish = choice["finish_reason"]
    if not done and finish is None:
        raise MalformedResponse(f"stream ended after {n_events} events without finish_reason or [DONE] (cut short)")
    if not n_events:
        raise MalformedResponse("stream held no answer (only [DONE])")
    return "".join(content), usage, "".join(reasoning) or None, finish


def _exception_chain(err: BaseException) -> list[BaseException]:
    """err, its causes and contexts, and the members of exception groups, depth first."""
    out, seen, stack = [], set(), [err]
    while stack:
        e = stack.pop()
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        out.append(e)
        stack.extend(reversed([e.__cause__, e.__context__, *getattr(e, "exceptions", ())]))
    return out


def describe_connect_error(err: BaseException, url: str) -> str:
    """Why a connection to `url` could not be opened, in words that tell the causes apart
    (httpx says "ConnectError" for all of them) and name the fix."""
    target = httpx.URL(url)
    host, port = target.host, target.port or (443 if target.scheme == "https" else 80)
    for e in _exception_chain(err):
        if isinstance(e, socket.gaierror):
            return f"DNS lookup of {host!r} failed ({e.strerror or e}): check the host name in judge.base_url"
        if isinstance(e, ssl.SSLError):
            reason = getattr(e, "reason", None) or str(e)
            return (f"TLS handshake with {host}:{port} failed ({reason}): if the server speaks plain HTTP, "
                    f"use http:// in judge.base_url")
        if isinstance(e, ConnectionRefusedError) or getattr(e, "errno", None) == errno.ECONNREFUSED:
            return f"connection refused by {host}:{port}: no server listens there (is it running, is the port right?)"
        if getattr(e, "errno", None) in (errno.EHOSTUNREACH, errno.ENETUNREACH):
            return f"no route to {host}:{port} ({e.strerror}): check the network and judge.base_url"
    return f"cannot connect to {host}:{port} ({type(err).__name__}: {redact(str(err)) or 'no detail'})"


def normalise_base_url(url: str) -> str:
    """The server's identity in cache keys: scheme and host lower-cased, default port and
    trailing slashes dropped, so that spellings of one URL share a cache."""
    u = httpx.URL(url)
    default = {"http": 80, "https": 443}.get(u.scheme)
    port = f":{u.port}" if u.port and u.port != default else ""
    return f"{u.scheme}://{u.host}{port}{u.path.rstrip('/')}"


class _Retry(Exception):
    """One attempt failed in a way another attempt may fix; `wait`: what Retry-After asked."""

    def __init__(self, reason: str, wait: Optional[float] = None):
        super().__init__(reason)
        self.reason, self.wait = reason, wait


TIMEOUTS_BEFORE_THROTTLE = 3
"""Timeouts in a row (no answer between them) that make the judge halve its concurrency."""


class OpenAIJudge(PromptJudge):
    """POSTs each prompt as one user message to `base_url + "/chat/completions"`.

    At most `concurrency` requests are in flight (a queue of request slots taken around
    each HTTP call; back-off sleeps do not hold a slot). Answers are streamed (server-sent
    events) unless `stream` is false. Three clocks bound a request: `connect_timeout_s` to
    open the connection, `read_timeout_s` of silence between bytes (a stall, or a long wait
    in the server's queue), `timeout_s` overall. A request is retried up to `max_retries`
    times on 429 and 503 (waiting the Retry-After the server asks for, up to
    `retry_after_max_s`), 408/409/425, 5xx, a timeout, a dropped connection or a malformed or
    cut-short body, with exponential back-off and jitter. Repeated timeouts halve the
    concurrency. What no retry can fix stops the whole batch with one error: 401/403 (the
    key; CredentialError), 404 (the URL or model; UnreachableError), `max_connect_failures`
    connection failures in a row (UnreachableError). Other statuses (400, 422...) fail the
    item at once. The API key is read from the environment variable named by `api_key_env`
    when a batch starts and lives only in the HTTP client's headers; every server message
    the judge logs, stores or raises is redacted first (sal.judge.secrets)."""

    backend = "openai"

    def __init__(self, config: JudgeConfig, cache_root=None, transport: Optional[httpx.AsyncBaseTransport] = None):
        super().__init__(config, cache_root)
        self._transport = transport
        self._slots: Optional[asyncio.Queue] = None
        self._stack: Optional[contextlib.AsyncExitStack] = None
        self._users = 0  # batches sharing the open clients (concurrent ajudge calls)
        # "Equal jitter": a fixed half of d = min(backoff_max_s, backoff_base_s * 2**retry) plus
        # a uniform half, so the wait lies in [d/2, d] and items that failed together do not
        # all come back together.
        half = dict(multiplier=config.backoff_base_s / 2, max=config.backoff_max_s / 2)
        self._backoff = tenacity.wait_exponential(**half) + tenacity.wait_random_exponential(**half)
        self._secret: Optional[str] = None  # the key, only to redact it from server messages
        self.limit = config.concurrency
        """Requests kept in flight now: `concurrency`, lowered when timeouts repeat."""
        self._to_park = 0  # slots to take out of use as they come back (lowering the limit)
        self._connect_failures = 0  # connection attempts failed in a row
        self._timeouts = 0  # timeouts in a row
        self._retry_after_warned = False
        self._stop: Optional[Exception] = None  # the error that stopped the batch: no request after it

    @property
    def workers(self) -> int:
        # More workers than slots, so that an item sleeping in back-off leaves its slot
        # to another item instead of idling it.
        return 2 * self.config.concurrency

    @property
    def cache_params(self) -> dict:
        c = self.config
        # The server is part of the question's identity: another server with a model of the
        # same name is another judge, whose answers must not be taken for this one's.
        return {"temperature": c.temperature, "top_p": c.top_p, "max_tokens": c.max_tokens,
                "server": normalise_base_url(c.base_url)}

    @property
    def url(self) -> str:
        return self.config.base_url.rstrip("/") + "/chat/completions"

    def _headers(self) -> dict:
        headers = {"Content-Type": "application/json"}
        if self.config.stream:
            headers["Accept"] = "text/event-stream"
        key = api_key(self.config)
        if key is not None:
            headers["Authorization"] = f"Bearer {key}"
            self._secret = key
        return headers

    def _redact(self, text: Optional[str]) -> str:
        return redact(text, [self._secret])

    @contextlib.asynccontextmanager
    async def _session(self) -> AsyncIterator[None]:
        """Open the HTTP clients and the pool of `concurrency` request slots; batches running
        together on one loop share them (and with them the concurrency limit).

        httpcore's connection pool rescans every connection (one poll() syscall each) on
        every request event, which costs O(connections) per event and dominated the CPU at
        32 connections. So the slots are spread over several small clients of at most
        CONNECTIONS_PER_CLIENT connections; each slot belongs to one client, so a client
        never has more requests than connections and nothing waits inside httpx."""
        if self._users == 0:
            stack = contextlib.AsyncExitStack()
            await stack.__aenter__()
            try:
                await self._open(stack)
            except BaseException:
                await stack.aclose()
                raise
            self._stack = stack
        self._users += 1
        try:
            yield
        finally:
            self._users -= 1
            if self._users == 0:
                stack, self._stack, self._slots = self._stack, None, None
                await stack.aclose()

    async def _open(self, stack: contextlib.AsyncExitStack) -> None:
        c = self.config
        headers = self._headers()
        # connect: DNS+TCP+TLS; read: the longest silence; write: sending the prompt; pool:
        # never waited on (a slot owns a connection). The overall cap is asyncio's, in _send.
        timeout = httpx.Timeout(connect=c.connect_timeout_s, read=c.read_timeout_s, write=c.read_timeout_s,
                                pool=c.connect_timeout_s)
        n_clients = math.ceil(c.concurrency / CONNECTIONS_PER_CLIENT)
        owners = [i % n_clients for i in range(c.concurrency)]
        clients = []
        for k in range(n_clients):
            size = owners.count(k)
            limits = httpx.Limits(max_connections=size, max_keepalive_connections=size)
            clients.append(await stack.enter_async_context(httpx.AsyncClient(
                headers=headers, timeout=timeout, limits=limits, transport=self._transport)))
        self._slots = asyncio.Queue()
        for k in owners[: self.limit]:  # a limit lowered in an earlier batch stays lowered
            self._slots.put_nowait(clients[k])
        self._to_park = 0
        self._stop = None
        self._connect_failures = 0

    def _give_back(self, client: httpx.AsyncClient) -> None:
        if self._slots is None:
            return
        if self._to_park:  # the limit was lowered: this slot leaves service
            self._to_park -= 1
        else:
            self._slots.put_nowait(client)

    def _body(self) -> dict:
        c = self.config
        body = {"model": c.model, "temperature": c.temperature, "top_p": c.top_p, "stream": c.stream}
        if c.stream:
            body["stream_options"] = {"include_usage": True}  # token counts for the cost report
        if c.max_tokens is not None:
            body["max_tokens"] = c.max_tokens
        return body

    async def _complete(self, item: JudgeItem, sample: int) -> Completion:
        assert self._slots is not None, "use ajudge()/judge()"
        c = self.config
        body = {**self._body(), "messages": [{"role": "user", "content": item.prompt}]}
        reasons: list[str] = []  # why each attempt failed, for the give-up message
        retrying = tenacity.AsyncRetrying(
            retry=tenacity.retry_if_exception_type(_Retry), stop=tenacity.stop_after_attempt(c.max_retries + 1),
            wait=self._wait, after=lambda state: reasons.append(state.outcome.exception().reason),
            before_sleep=lambda state: log.debug("judge request for %s: %s; retry %d in %.2f s", item.key, reasons[-1],
                                                 state.attempt_number, state.next_action.sleep),
            reraise=True)
        try:
            return await retrying(self._attempt, body, reasons)
        except _Retry:
            raise TransportError(f"gave up after {len(reasons)} attempts at {self.url}: "
                                 + "; ".join(reasons[-4:])) from None

    def _wait(self, state: tenacity.RetryCallState) -> float:
        """Before the next attempt: the back-off, or the Retry-After the server asked for
        (already capped at retry_after_max_s) when that is longer."""
        return max(self._backoff(state), state.outcome.exception().wait or 0.0)

    async def _attempt(self, body: dict, failed: list[str]) -> Completion:
        """One request in one slot (`failed`: why the earlier attempts failed). The slot is
        given back before any back-off sleep, so an item waiting to retry leaves it to
        another item."""
        client = await self._slots.get()  # a free request slot (the concurrency limit)
        try:
            if self._stop is not None:  # the batch is stopping: send nothing more
                raise self._stop
            self.tally.n_requests += 1
            self.tally.n_retries += bool(failed)
            return self._account(*await self._send(client, body))
        finally:
            self._give_back(client)

    async def _send(self, client: httpx.AsyncClient, body: dict) -> tuple[str, dict, Optional[str], Optional[str]]:
        """One attempt: the answer, or _Retry, or an error that stops the item or the batch."""
        c = self.config
        try:
            answer = await asyncio.wait_for(self._exchange(client, body), timeout=c.timeout_s)
        except asyncio.TimeoutError:
            raise self._timed_out(f"no complete answer within timeout_s={c.timeout_s:g} s") from None
        except httpx.ConnectTimeout:
            raise self._connect_failed(f"connect timeout after {c.connect_timeout_s:g} s "
                                       f"(judge.connect_timeout_s) to {self.url}") from None
        except httpx.TimeoutException as err:  # read (silence), write or pool
            what = "no data" if isinstance(err, httpx.ReadTimeout) else f"{type(err).__name__}"
            raise self._timed_out(f"{what} for read_timeout_s={c.read_timeout_s:g} s") from None
        except httpx.ConnectError as err:
            raise self._connect_failed(describe_connect_error(err, c.base_url)) from None
        except httpx.TransportError as err:  # reset, closed mid-answer, protocol error
            raise _Retry(f"connection dropped ({type(err).__name__}: {self._redact(str(err))[:160]})") from None
        except MalformedResponse as err:
            raise _Retry(f"malformed body: {self._redact(str(err))}") from None
        self._timeouts = 0
        return answer

    async def _exchange(self, client: httpx.AsyncClient, body: dict) -> tuple[str, dict, Optional[str], Optional[str]]:
        async with client.stream("POST", self.url, json=body) as response:
            self._connect_failures = 0  # the server answered: it is reachable
            if response.status_code != 200:
                text = (await response.aread())[:2000].decode("utf-8", "replace")
                raise self._refused(response.status_code, text, response.headers)
            if "text/event-stream" in response.headers.get("content-type", ""):
                return await read_stream(response.aiter_lines())
            return read_completion(await response.aread())  # asked not to stream, or ignored it

    def _refused(self, status: int, text: str, headers: httpx.Headers) -> Exception:
        """The error for a non-200 answer: _Retry, TransportError (this item) or a UserError
        that stops the batch. Server text is redacted: a 401 may echo the key."""
        said = self._redact(text.strip())[:300]
        if status in (401, 403, 404):
            self._stop = self._fatal_status(status, said)
            return self._stop
        if status in RETRYABLE_STATUS:
            wait = self._retry_after(headers.get("retry-after")) if status in (429, 503) else None
            return _Retry(f"HTTP {status}", wait)
        return TransportError(f"HTTP {status} from {self.url}: {said!r}")

    def _fatal_status(self, status: int, said: str) -> Exception:
        """401/403 (the key) or 404 (the URL or the model): the same answer awaits every
        item, so the batch stops with one error instead of each item failing in turn."""
        c = self.config
        if status in (401, 403):
            return key_refused(c, status, said)
        return UnreachableError(
            f"judge server {c.base_url} answered HTTP 404 for {self.url}: check judge.base_url (requests go to "
            f"base_url + \"/chat/completions\", e.g. http://127.0.0.1:8000/v1) and judge.model={c.model!r}. "
            f"The server said: {said!r}")

    def _retry_after(self, value: Optional[str]) -> Optional[float]:
        wait = parse_retry_after(value)
        cap = self.config.retry_after_max_s
        if wait is not None and wait > cap:
            if not self._retry_after_warned:
                log.warning("judge server %s asked to wait %.0f s (Retry-After); waiting judge.retry_after_max_s=%g s "
                            "instead (shown once)", self.config.base_url, wait, cap)
                self._retry_after_warned = True
            wait = cap
        return wait

    def _connect_failed(self, reason: str) -> Exception:
        """A retry, unless connections keep failing: then the server is not there, and trying
        every item in turn would only delay the error by minutes."""
        self._connect_failures += 1
        if self._connect_failures >= self.config.max_connect_failures:
            self._stop = UnreachableError(
                f"judge server {self.config.base_url} is unreachable: {self._connect_failures} connection attempts "
                f"in a row failed; last: {reason}. Start the server or fix judge.base_url; answers received so "
                f"far are cached, so a rerun resumes.")
            return self._stop
        return _Retry(reason)

    def _timed_out(self, reason: str) -> _Retry:
        """A retry; when timeouts repeat, fewer requests at once: a server that queues them
        (few slots, many clients) makes the later ones wait past the timeout, and a request
        abandoned in its queue is computed for nothing and sent again."""
        self._timeouts += 1
        if self._timeouts >= TIMEOUTS_BEFORE_THROTTLE and self.limit > 1:
            lowered = max(1, self.limit // 2)
            log.warning("judge: %d requests in a row timed out (%s); lowering concurrency from %d to %d for this "
                        "run (judge.concurrency): the server seems to queue requests longer than "
                        "judge.read_timeout_s", self._timeouts, reason, self.limit, lowered)
            self._to_park += self.limit - lowered
            self.limit = lowered
            self._timeouts = 0
        return _Retry(reason)

    def _account(self, content: str, usage: dict, reasoning: Optional[str],
                 finish_reason: Optional[str] = None) -> Completion:
        prompt_tokens = int(usage.get("prompt_tokens") or 0)
        completion_tokens = int(usage.get("completion_tokens") or 0)
        if not usage:
            self.tally.n_missing_usage += 1
        r = self.tally
        r.prompt_tokens += prompt_tokens
        r.completion_tokens += completion_tokens
        r.cost_usd += (
            prompt_tokens / 1000 * self.config.price_per_1k_prompt
            + completion_tokens / 1000 * self.config.price_per_1k_completion
        )
        extra = {k: v for k, v in (("reasoning", reasoning), ("finish_reason", finish_reason)) if v} or None
        return Completion(content, prompt_tokens, completion_tokens, extra)


def key_refused(config: JudgeConfig, status: int, said: str) -> CredentialError:
    """The error for a 401/403 from the judge server; ``said``: its words, already redacted."""
    fix = (f"check the key in the environment variable {config.api_key_env} (judge.api_key_env)"
           if config.api_key_env else "the server wants a key: set judge.api_key_env to the name of the "
           "environment variable that holds it")
    return CredentialError(f"judge server {config.base_url} refused the request with HTTP {status}: {fix}. "
                           f"The server said: {said!r}")


def api_key(config: JudgeConfig) -> Optional[str]:
    """The API key from the environment variable named by `api_key_env` (None when the
    server needs none); CredentialError naming the variable when it is unset or empty."""
    name = config.api_key_env
    if name is None:
        return None
    key = os.environ.get(name, "").strip()
    if not key:
        raise CredentialError(
            f"environment variable {name} (judge.api_key_env) is not set: export the API key there "
            f"(export {name}=...), or set judge.api_key_env=null for a server without authentication")
    return key
