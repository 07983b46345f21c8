"""Keeping the judge's API key out of every file, log line and error message.

The key lives only in the environment variable named by ``judge.api_key_env`` and in the
HTTP client's headers. Three ways it could still leak, each closed here:

- a server echoes it back ("Incorrect API key provided: sk-..."), and the judge logs or
  stores that message (a failure reason in labelled_rules.parquet): ``redact`` every server
  message before it is logged, stored or raised;
- a user pastes the key where the variable's *name* belongs (``judge.api_key_env=sk-...``):
  ``is_env_name``/``looks_like_secret`` let the config refuse it, ``check_overrides`` refuses
  it on the command line before Hydra writes its saved configs, and ``scrub_saved_configs``
  removes it from saved configs that were already written;
- the key itself ends up in a message we format: never format it (the tests grep for it).
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Iterable, Optional, Sequence

REDACTED = "<redacted>"

ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")

# Shapes of credentials, however they got into a message. Conservative on purpose: a word
# of prose or a URL path must survive, a key must not.
_SECRET_SHAPES = [
    # OpenAI/DeepSeek/Anthropic-style keys: sk-..., sk-proj-..., sk-ant-...
    re.compile(r"\bsk-[A-Za-z0-9_\-]{6,}"),
    # Stripe-like and other prefixed tokens: sk_live_..., pk_test_..., rk_...
    re.compile(r"\b(?:sk|pk|rk)_[A-Za-z0-9_]{10,}"),
    # Authorization header values, whatever the token's alphabet.
    re.compile(r"(?i)\b(bearer|basic)\s+[A-Za-z0-9._~+/=\-]{6,}"),
    # Long hexadecimal tokens (32+ digits: a 128-bit secret or more).
    re.compile(r"\b[0-9a-fA-F]{32,}\b"),
    # Long base64/base64url tokens (24+ characters); kept unless they mix lower case and
    # digits, as random tokens do and words, URL paths and UPPER_CASE names do not.
    re.compile(r"(?<![A-Za-z0-9+_\-])[A-Za-z0-9+_\-]{24,}={0,2}"),
]


def _replace_shape(match: re.Match) -> str:
    token = match.group(0)
    if match.re is _SECRET_SHAPES[2]:  # keep the scheme word of an Authorization value
        return f"{match.group(1)} {REDACTED}"
    if match.re is _SECRET_SHAPES[4] and not (any(c.isdigit() for c in token) and any(c.islower() for c in token)):
        return token
    return REDACTED


def redact(text: Optional[str], secrets: Iterable[Optional[str]] = ()) -> str:
    """`text` with every known secret and everything shaped like one replaced by
    "<redacted>". `secrets`: exact values to remove first (the configured key), so that a
    key of an unusual shape goes too."""
    if not text:
        return text or ""
    for secret in secrets:
        if secret and len(secret) >= 4:
            text = text.replace(secret, REDACTED)
    for shape in _SECRET_SHAPES:
        text = shape.sub(_replace_shape, text)
    return text


def is_env_name(name: str) -> bool:
    """A valid environment-variable name (POSIX portable: letters, digits, underscore)."""
    return bool(ENV_NAME.match(name))


def looks_like_secret(value: str) -> bool:
    """True when `value` is shaped like a credential rather than a variable name (key
    prefixes such as sk- or sk_live_, long hex, a long token mixing lower case and digits)."""
    return redact(value) != value


def env_key_problem(name: Optional[str]) -> Optional[str]:
    """Why `name` cannot be judge.api_key_env (None when it can). Never quotes the value."""
    if name is None:
        return None
    if not name or "=" in name or not is_env_name(name) or looks_like_secret(name):
        return ("give the NAME of the environment variable that holds the key (letters, digits and "
                "underscores, e.g. DEEPSEEK_API_KEY), or null for a server without authentication; "
                "never the key itself")
    return None


# -- saved configs ---------------------------------------------------------------------------
_OVERRIDE = re.compile(r"^[~+]*judge\.api_key_env=(.*)$")


def check_overrides(argv: Sequence[str]) -> None:
    """Refuse a pasted key in a command-line override (``judge.api_key_env=sk-...``) before
    Hydra writes its saved configs (.hydra/overrides.yaml, config.yaml). Call it from an
    entrypoint before ``hydra.main`` runs. Raises ConfigError with the value redacted."""
    from sal.errors import ConfigError

    for arg in argv:
        match = _OVERRIDE.match(arg.strip())
        if not match:
            continue
        value = match.group(1).strip().strip("'\"")
        if value.lower() in ("null", "none", "~", ""):
            continue
        problem = env_key_problem(value)
        if problem:
            raise ConfigError(f"judge.api_key_env={REDACTED} is invalid: {problem}")


# `api_key_env: <value>` (YAML) or `judge.api_key_env=<value>` (an override line), quoted or not.
_SAVED_VALUE = re.compile(r"(?P<head>api_key_env\s*[:=]\s*)(?P<quote>['\"]?)(?P<value>[^'\"\s#,\]}]+)(?P=quote)")


def scrub_text(text: str, secrets: Iterable[Optional[str]] = ()) -> str:
    """`text` (a saved YAML config or override list) with any api_key_env value that is not a
    variable name, every exact secret, and every sk-/Bearer-shaped token replaced. Other
    long hex strings (model revisions, fingerprints) are kept: they are not secrets."""

    def fix(match: re.Match) -> str:
        value = match.group("value")
        if value.lower() in ("null", "none", "~") or env_key_problem(value) is None:
            return match.group(0)
        return f"{match.group('head')}{match.group('quote')}{REDACTED}{match.group('quote')}"

    text = _SAVED_VALUE.sub(fix, text)
    for secret in secrets:
        if secret and len(secret) >= 4:
            text = text.replace(secret, REDACTED)
    for shape in _SECRET_SHAPES[:3]:  # prefixed keys and Authorization values only
        text = shape.sub(_replace_shape, text)
    return text


def scrub_saved_configs(run_dir: str | os.PathLike, secrets: Iterable[Optional[str]] = ()) -> list[Path]:
    """Rewrite (atomically) every Hydra-saved file under ``run_dir/.hydra`` (config.yaml,
    overrides.yaml, hydra.yaml, per job) and a sweep directory's ``multirun.yaml`` that
    holds a pasted key; returns the files changed. Also pass the key value itself in
    `secrets` when it is known (the value of the variable named by a valid api_key_env)."""
    from sal.atomic import write_text

    secrets = list(secrets)
    changed = []
    root = Path(run_dir)
    for path in sorted({*root.glob(".hydra/**/*.yaml"), *root.glob("multirun.yaml")}):
        if not path.is_file():
            continue
        text = path.read_text()
        clean = scrub_text(text, secrets)
        if clean != text:
            write_text(path, clean)
            changed.append(path)
    return changed
