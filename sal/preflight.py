"""Start-up checks that need only the config: is the subject model (or the local judge
model) where the config says, and is the judge reachable with its key?

A stage runs them before it loads any model, so that a missing model or an unreachable
server costs seconds and says what to do, instead of five silent retries followed by a
transformers OSError, or a judge failure after an hour of feature passes.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from sal.config.judge import JudgeConfig
from sal.config.model import ModelConfig
from sal.errors import ConfigError, CredentialError, MissingInputError, UnreachableError

log = logging.getLogger("sal")

HUB_TIMEOUT_S = 5.0
"""One HEAD request to the hub, no retries: enough to tell reachable from not."""


def hub_offline() -> bool:
    from huggingface_hub import constants

    return bool(constants.HF_HUB_OFFLINE) or os.environ.get("TRANSFORMERS_OFFLINE", "").strip() in ("1", "true", "yes")


def _local_way_out(cfg: ModelConfig) -> str:
    return (f"download it where the hub is reachable (`huggingface-cli download {cfg.hub_id}`) and copy the "
            f"Hugging Face cache here, or point the model at a local copy (model.source=local "
            f"model.local_path=/path/to/{cfg.hub_id.split('/')[-1]})")


def check_model(cfg: ModelConfig, timeout_s: float = HUB_TIMEOUT_S) -> str:
    """Where ``cfg``'s weights will come from ("built in", "package", "local", "hub cache",
    "hub"); a UserError naming the fix when they cannot come from anywhere."""
    if cfg.source == "tiny":
        return "built in"
    if cfg.source == "gguf":
        from sal.models import packaged_gguf

        packaged_gguf(cfg)
        return "package"
    if cfg.source == "local":
        if not cfg.local_path or not (Path(cfg.local_path) / "config.json").exists():
            raise MissingInputError(f"model {cfg.name}: model.local_path={cfg.local_path!r} holds no config.json: "
                                    f"point it at a directory saved by save_pretrained (or a hub snapshot).")
        return "local"
    return _check_hub(cfg, timeout_s)


def _check_hub(cfg: ModelConfig, timeout_s: float) -> str:
    import httpx
    from huggingface_hub import constants, get_token, hf_hub_url, try_to_load_from_cache

    revision = cfg.revision or "main"
    if isinstance(try_to_load_from_cache(cfg.hub_id, "config.json", revision=revision), str):
        return "hub cache"
    if hub_offline():
        raise UnreachableError(f"model {cfg.name}: {cfg.hub_id} (revision {revision}) is not in the local Hugging "
                               f"Face cache ({constants.HF_HUB_CACHE}) and the hub is off (HF_HUB_OFFLINE or TRANSFORMERS_OFFLINE is set): "
                               f"{_local_way_out(cfg)}.")
    url = hf_hub_url(cfg.hub_id, "config.json", revision=revision)
    token = get_token()
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    try:
        response = httpx.head(url, headers=headers, timeout=timeout_s, follow_redirects=True)
    except httpx.TimeoutException:
        raise UnreachableError(f"model {cfg.name}: the Hugging Face hub ({constants.ENDPOINT}) did not answer within "
                               f"{timeout_s:g} s: {_local_way_out(cfg)}; or set HF_HUB_OFFLINE=1 to use only "
                               f"the local cache.") from None
    except httpx.HTTPError as err:
        raise UnreachableError(f"model {cfg.name}: cannot reach the Hugging Face hub at {constants.ENDPOINT} "
                               f"({type(err).__name__}: {err}): {_local_way_out(cfg)}; or set HF_HUB_OFFLINE=1 "
                               f"to use only the local cache.") from None
    if response.status_code in (401, 403):
        raise CredentialError(f"model {cfg.name}: the hub refused {cfg.hub_id} (HTTP {response.status_code}): it "
                              f"is gated or private; accept its licence on the hub and log in "
                              f"(`huggingface-cli login`, or export HF_TOKEN).")
    if response.status_code == 404:
        raise ConfigError(f"model {cfg.name}: the hub has no {cfg.hub_id} at revision {revision} (HTTP 404): fix "
                          f"model.hub_id / model.revision in conf/model/{cfg.name}.yaml.")
    if response.status_code >= 400:
        log.warning("model %s: the hub answered HTTP %d for %s; trying to load it anyway", cfg.name,
                    response.status_code, url)
    return "hub"


def check_judge(cfg: JudgeConfig, subject: ModelConfig) -> None:
    """The judge's key and server (openai) or its model (hf_local); nothing for the others."""
    if cfg.backend == "openai":
        from sal.judge import preflight

        preflight(cfg)
    elif cfg.backend == "hf_local":
        from sal.models import named_model_config

        check_model(named_model_config(cfg.hf_model) if cfg.hf_model else subject)
