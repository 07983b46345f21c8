"""The API key is never written: redaction of server messages, refusal of a key pasted where
the variable's name belongs, scrubbing of Hydra's saved configs."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from sal.config.judge import JudgeConfig
from sal.errors import ConfigError
from sal.judge.secrets import check_overrides, env_key_problem, redact, scrub_saved_configs, scrub_text

ROOT = Path(__file__).resolve().parents[2]
PASTED = "sk-pasted0123456789abcdefDISTINCT"


@pytest.mark.parametrize("text, gone", [
    ("Incorrect API key provided: sk-proj-abcDEF123456. You can find", "sk-proj-abcDEF123456"),
    ("Authorization: Bearer eyJhbGciOiJIUzI1NiJ9.e30.abc", "eyJhbGciOiJIUzI1NiJ9"),
    ("token 0123456789abcdef0123456789abcdef rejected", "0123456789abcdef0123456789abcdef"),
    ("bad key hf_AbCdEf1234567890ghijklmnopq here", "hf_AbCdEf1234567890ghijklmnopq"),
    ("stripe-like sk_live_abcdefghij123", "sk_live_abcdefghij123"),
])
def test_key_shaped_tokens_are_redacted(text, gone):
    clean = redact(text)
    assert gone not in clean and "<redacted>" in clean


def test_redaction_keeps_what_a_user_needs_to_read():
    for text in ("HTTP 404 from http://127.0.0.1:8000/v1/chat/completions: model not found",
                 "the model deepseek-reasoner does not exist", "DEEPSEEK_API_KEY_2024_BACKUP is not set"):
        assert redact(text) == text
    # A key of no known shape goes when it is named.
    assert redact("key was abc.def!", ["abc.def!"]) == "key was <redacted>"


@pytest.mark.parametrize("name, ok", [
    ("DEEPSEEK_API_KEY", True), ("my_key", True), ("_K2", True), (None, True),
    ("sk-abc123", False), (PASTED, False), ("0123abcd", False), ("", False), ("A=B", False), ("MY KEY", False),
    ("sk_live_abcdefghijklmn", False), ("hf_AbCdEf1234567890ghijklmnopq", False),
])
def test_api_key_env_must_be_a_variable_name(name, ok):
    assert (env_key_problem(name) is None) == ok
    if not ok:
        with pytest.raises(ConfigError) as err:
            JudgeConfig(backend="openai", api_key_env=name)
        assert "<redacted>" in str(err.value) and (not name or name not in str(err.value))


def test_check_overrides_refuses_a_pasted_key_without_quoting_it():
    check_overrides(["judge=openai", "judge.api_key_env=DEEPSEEK_API_KEY", "judge.api_key_env=null"])
    for arg in (f"judge.api_key_env={PASTED}", f"+judge.api_key_env='{PASTED}'", f"judge.api_key_env=sk-{PASTED}"):
        with pytest.raises(ConfigError) as err:
            check_overrides(["judge=openai", arg])
        assert PASTED not in str(err.value)


def test_scrub_text_removes_pasted_keys_and_keeps_the_rest():
    saved = textwrap.dedent(f"""\
        - judge=openai
        - judge.api_key_env={PASTED}
        judge:
          api_key_env: {PASTED}
          other_env: DEEPSEEK_API_KEY
        model:
          revision: 0123456789abcdef0123456789abcdef01234567
        """)
    clean = scrub_text(saved)
    assert PASTED not in clean and clean.count("<redacted>") == 2
    assert "0123456789abcdef0123456789abcdef01234567" in clean and "DEEPSEEK_API_KEY" in clean
    assert scrub_text("api_key_env: DEEPSEEK_API_KEY\n") == "api_key_env: DEEPSEEK_API_KEY\n"


APP = textwrap.dedent("""
    import sys
    import hydra
    from hydra.core.hydra_config import HydraConfig
    from sal.config.schema import register_configs
    register_configs()
    conf, mode = sys.argv.pop(1), sys.argv.pop(1)

    @hydra.main(version_base="1.3", config_path=conf, config_name="evaluate")
    def main(cfg):
        if mode == "scrub":
            from sal.judge.secrets import scrub_saved_configs
            print("scrubbed", len(scrub_saved_configs(HydraConfig.get().runtime.output_dir)))

    main()
""")


def test_hydra_keeps_a_pasted_key_in_its_saved_configs_unless_scrubbed(tmp_path):
    """Hydra writes .hydra/overrides.yaml and config.yaml before the task runs, so a config
    check inside the task is too late: the saved files must be scrubbed (or the override
    refused before hydra.main, check_overrides)."""
    app = tmp_path / "app.py"
    app.write_text(APP)
    found = {}
    for mode in ("keep", "scrub"):
        run_dir = tmp_path / mode
        out = subprocess.run([sys.executable, str(app), str(ROOT / "conf"), mode, "judge=openai",
                              f"judge.api_key_env={PASTED}", f"hydra.run.dir={run_dir}"],
                             capture_output=True, text=True, timeout=120, env={**os.environ, "PYTHONPATH": str(ROOT)})
        assert out.returncode == 0, out.stderr[-2000:]
        found[mode] = [p.name for p in run_dir.rglob("*") if p.is_file() and PASTED.encode() in p.read_bytes()]
    assert "overrides.yaml" in found["keep"]  # why the scrub is needed
    assert found["scrub"] == []
    assert scrub_saved_configs(tmp_path / "scrub") == []  # idempotent
