"""Errors a user can fix without reading our code: a bad setting, a missing input, an
unreachable model hub or judge server, a missing or rejected API key.

The entrypoints (``sal.cli.stage_main``) print such an error's message alone, without a
traceback, and exit with status 2; ``HYDRA_FULL_ERROR=1`` or ``SAL_DEBUG=1`` shows the
traceback too. Every message says what was wrong and how to fix it, and never contains a
secret. The subclasses keep the built-in types older callers catch (ValueError,
FileNotFoundError, ConnectionError, PermissionError)."""

from __future__ import annotations


class UserError(Exception):
    """A mistake or a missing resource the user can fix; its message names the fix."""


class ConfigError(UserError, ValueError):
    """A setting that is invalid, or that contradicts another one or the model."""


class MissingInputError(UserError, FileNotFoundError):
    """A file or an earlier stage's output that is not there."""


class UnreachableError(UserError, ConnectionError):
    """A model hub or a judge server that cannot be reached."""


class CredentialError(UserError, PermissionError):
    """An API key that is missing, or that a server refused (401/403)."""
