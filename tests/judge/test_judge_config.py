"""Judge settings that decide where answers are cached and which servers are accepted."""

from __future__ import annotations

from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

from sal.config.judge import JudgeConfig, base_url_problem
from sal.config.schema import register_configs
from sal.errors import ConfigError

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("group", ["openai", "hf_local", "lexical"])
def test_a_relative_sal_cache_names_one_judge_cache_for_every_run(tmp_path, monkeypatch, group):
    """$SAL_CACHE=rel/cache used to become <run dir>/rel/cache/judge (make_judge joins a
    relative cache_dir to the run directory): a new run name paid for every answer again."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("SAL_CACHE", "rel/cache")
    register_configs()
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose(config_name="evaluate", overrides=[f"judge={group}", "run_name=one"])
    assert cfg.judge.cache_dir == str(tmp_path / "rel" / "cache" / "judge")

    from sal.judge import make_judge

    if group == "openai":
        judge = make_judge(JudgeConfig(**{k: cfg.judge[k] for k in ("backend", "base_url", "model", "cache_dir")},
                                       api_key_env=None), run_dir=tmp_path / "runs" / "m" / "one")
        assert judge.cache.root == tmp_path / "rel" / "cache" / "judge"


@pytest.mark.parametrize("url, ok", [
    ("http://127.0.0.1:8000/v1", True), ("https://api.deepseek.com/v1", True), ("HTTP://Host/v1/", True),
    ("127.0.0.1:8000/v1", False), ("http:///v1", False), ("http://h:99999/v1", False), ("ftp://h/v1", False),
    ("http://h/v1?key=x", False),
])
def test_base_url_must_be_a_usable_url(url, ok):
    assert (base_url_problem(url) is None) == ok
    if not ok:
        with pytest.raises(ConfigError, match="judge.base_url"):
            JudgeConfig(backend="openai", base_url=url)


@pytest.mark.parametrize("field", ["connect_timeout_s", "read_timeout_s", "timeout_s", "retry_after_max_s"])
def test_timeouts_must_be_positive(field):
    with pytest.raises(ConfigError, match=field):
        JudgeConfig(**{field: 0})
    with pytest.raises(ConfigError, match="max_connect_failures"):
        JudgeConfig(max_connect_failures=0)
