"""Start-up checks of the judge, run before any model loads: a missing key, a malformed URL or
a server that is not there should cost the user seconds, not the hours of a stage that
reaches its judging step."""

from __future__ import annotations

import asyncio
import logging

import httpx

from sal.config.judge import JudgeConfig
from sal.errors import UnreachableError
from sal.judge.base import run_sync
from sal.judge.openai_http import api_key, describe_connect_error, key_refused
from sal.judge.secrets import redact

log = logging.getLogger("sal.judge")

PREFLIGHT_TIMEOUT_S = 4.0
"""Longest the reachability probe may take, DNS included."""


def preflight(config: JudgeConfig, timeout_s: float = PREFLIGHT_TIMEOUT_S) -> None:
    """Check that the configured judge can be used; raise a UserError naming the fix if not.

    For the openai backend: the config is valid (URL well-formed, api_key_env a variable
    name: ConfigError), the key's variable is set (CredentialError naming it), and the
    server answers GET {base_url}/models within `timeout_s`: refused, DNS or TLS failures and
    silence raise UnreachableError naming the URL and the cause, 401/403 CredentialError
    (the server's words redacted). A 404 is fine (some servers have no /models), and so is
    any other answer: the server is there. Other backends need nothing: returns at once."""
    if config.backend != "openai":
        return
    key = api_key(config)
    run_sync(_probe(config, key, timeout_s))


async def _probe(config: JudgeConfig, key, timeout_s: float) -> None:
    url = config.base_url.rstrip("/") + "/models"
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    timeout = httpx.Timeout(timeout_s, connect=min(config.connect_timeout_s, timeout_s))
    try:
        async with httpx.AsyncClient(timeout=timeout, headers=headers) as client:
            # asyncio's cap as well: name resolution is not always bounded by httpx's timeouts.
            response = await asyncio.wait_for(client.get(url), timeout=timeout_s)
    except httpx.ConnectError as err:
        raise UnreachableError(f"judge server {config.base_url} is unreachable: "
                               f"{describe_connect_error(err, config.base_url)}") from None
    except (asyncio.TimeoutError, httpx.TimeoutException):
        raise UnreachableError(f"judge server {config.base_url} did not answer within {timeout_s:g} s "
                               f"(GET {url}): is it running, and is judge.base_url right?") from None
    except httpx.TransportError as err:
        raise UnreachableError(f"judge server {config.base_url} closed the connection without an answer "
                               f"({type(err).__name__}: {redact(str(err), [key])[:160]}): is judge.base_url "
                               f"the server's OpenAI-compatible API (e.g. http://127.0.0.1:8000/v1)?") from None
    status = response.status_code
    if status in (401, 403):
        raise key_refused(config, status, redact(response.text.strip(), [key])[:300])
    if status == 200:
        _check_model(config, response)
    elif status != 404:
        log.warning("judge server %s answered HTTP %d to GET %s; going on", config.base_url, status, url)


def _check_model(config: JudgeConfig, response: httpx.Response) -> None:
    """Warn (only: hosted APIs accept aliases they do not list) when the server does not list
    judge.model."""
    try:
        ids = [m.get("id") for m in response.json().get("data", []) if isinstance(m, dict)]
    except (ValueError, AttributeError):
        return
    if ids and config.model not in ids:
        log.warning("judge.model=%r is not among the models %s lists: %s", config.model, config.base_url,
                    ", ".join(map(str, ids[:10])))
