"""The openai backend against a real HTTP server on 127.0.0.1 that injects faults."""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))  # tests.judge.fault_server, also when pytest runs from elsewhere

from sal.config.judge import JudgeConfig  # noqa: E402
from sal.errors import CredentialError, UnreachableError  # noqa: E402
from sal.judge import CATEGORIES, FAILED, OK, UNPARSEABLE, JudgeCache, make_judge, rule_item  # noqa: E402
from sal.judge.openai_http import parse_retry_after  # noqa: E402
from tests.judge.fault_run import expected_category, item_index  # noqa: E402
from tests.judge.fault_server import FaultServer  # noqa: E402

KEY_ENV = "SAL_TEST_JUDGE_KEY"
KEY = "sk-test-DISTINCTIVE-7f3a9c2e41"
RETRY_AFTER = 0.3


def answer(prompt: str) -> str:
    """R1-style: the reasoning names the other categories before the final judgement."""
    i = item_index(prompt)
    if i % 50 == 47:
        return "<think>Hmm.</think> I am not sure what to answer."  # never parseable
    others = [c for c in CATEGORIES if c != expected_category(i)]
    return (f"<think>Is it {others[0]}? Or \"Category\": \"{others[1]}\"? Let me reconsider.</think>\n"
            f'<judgement> {{"Category": "{expected_category(i)}", "Relation/Intuition": "item {i}"}} </judgement>')


FAULT_CYCLE = ("429", "500", "stall", "drop", "malformed", "no_choices")


def faults(prompt: str, attempt: int):
    i = item_index(prompt)
    if i % 50 == 49:
        return "500"  # always failing: must end reported as failed
    if i < 30 and attempt == 0:
        return FAULT_CYCLE[i % len(FAULT_CYCLE)]
    if i < 30 and i % 7 == 0 and attempt == 1:
        return FAULT_CYCLE[(i + 1) % len(FAULT_CYCLE)]
    return None


def items(n: int):
    return [rule_item(i, -1, i + 1000, [f"premise-{i} text"], f"conclusion of {i}") for i in range(n)]


def config(server: FaultServer, cache_dir: Path, **kw) -> JudgeConfig:
    base = dict(backend="openai", base_url=server.base_url, model="fake-r1", api_key_env=KEY_ENV, concurrency=4,
                read_timeout_s=0.2, timeout_s=5.0, max_retries=3, backoff_base_s=0.01, backoff_max_s=0.05,
                max_parse_retries=2,
                cache_dir=str(cache_dir), price_per_1k_prompt=0.5, price_per_1k_completion=2.0)
    base.update(kw)
    return JudgeConfig(**base)


@pytest.fixture
def api_key(monkeypatch):
    monkeypatch.setenv(KEY_ENV, KEY)
    return KEY


def test_faults_retries_cache_and_secrets(tmp_path, api_key, caplog):
    caplog.set_level(logging.DEBUG)
    n = 50
    with FaultServer(latency_s=0.01, faults=faults, answer=answer, stall_s=0.6,
                        retry_after=str(RETRY_AFTER), lifetime_s=60) as server:
        cfg = config(server, tmp_path / "cache")
        judge = make_judge(cfg)
        results = judge.judge(items(n), progress=False)

        # Every item is accounted for exactly once, in order.
        assert [r.key for r in results] == [it.key for it in items(n)]
        status = {r.key: r.status for r in results}
        assert status["rule/49,-1,1049"] == FAILED and status["rule/47,-1,1047"] == UNPARSEABLE
        assert [k for k, s in status.items() if s != OK] == ["rule/47,-1,1047", "rule/49,-1,1049"]
        for r in results:
            if r.ok:
                i = int(r.key.split("/")[1].split(",")[0])
                assert r.label == expected_category(i) and r.text == f"item {i}"
        failed = next(r for r in results if r.status == FAILED)
        assert "gave up after 4 attempts" in failed.error and "HTTP 500" in failed.error
        assert sorted(k for k, _, _ in judge.tally.problems) == ["rule/47,-1,1047", "rule/49,-1,1049"]
        assert (judge.tally.n_ok, judge.tally.n_failed, judge.tally.n_unparseable) == (48, 1, 1)

        # Each fault really happened, and each item was answered successfully only as often
        # as it needed (once; three times for the never-parseable one).
        outcomes = [o for evs in server.events.values() for _, o in evs]
        for fault in FAULT_CYCLE:
            assert fault in outcomes
        ok_prompts = {p: c for p, c in server.ok_answers.items()}
        assert all(c == (3 if item_index(p) == 47 else 1) for p, c in ok_prompts.items())
        assert server.attempts[items(n)[49].prompt] == 1 + cfg.max_retries

        # Concurrency limit, measured by the server.
        assert 2 <= server.max_in_flight <= cfg.concurrency

        # Retry-After honoured: the retry of a 429 came at least RETRY_AFTER later.
        for prompt, evs in server.events.items():
            times = [t for t, o in evs if o == "429"]
            if times:
                arrivals = [t for t, o in evs if o != "429" and t > times[0]]
                assert min(arrivals) - times[0] >= RETRY_AFTER - 0.02

        # Usage and cost tallied from the responses.
        rep = judge.tally
        assert rep.prompt_tokens > 0 and rep.completion_tokens > 0
        assert rep.cost_usd == pytest.approx(rep.prompt_tokens / 1000 * 0.5 + rep.completion_tokens / 1000 * 2.0)
        assert rep.n_requests == server.n_requests

        # Sampling parameters as in the paper, no max_tokens unless configured.
        assert all(b["temperature"] == 0.1 and b["top_p"] == 0.9 and "max_tokens" not in b for b in server.bodies)
        assert server.authorizations == {f"Bearer {KEY}"}

        # Second run: only the failed item is asked again; everything else from the cache.
        server.reset()
        again = make_judge(cfg).judge(items(n), progress=False)
        assert set(server.attempts) == {items(n)[49].prompt}
        assert [(r.key, r.status, r.label) for r in again] == [(r.key, r.status, r.label) for r in results]
        assert all(r.cached for r in again if r.status != FAILED)

        server.reset()
        clean = [it for it in items(n) if item_index(it.prompt) != 49]
        assert all(r.status != FAILED for r in make_judge(cfg).judge(clean, progress=False))
        assert server.n_requests == 0

    # The API key is in no file the run wrote, no log record and no config dump.
    for path in tmp_path.rglob("*"):
        if path.is_file():
            assert KEY.encode() not in path.read_bytes(), path
    assert KEY not in caplog.text
    assert KEY not in json.dumps(dataclasses.asdict(cfg)) and KEY not in repr(cfg)


def test_a_wrong_url_stops_the_batch_at_once(tmp_path, api_key):
    """A 404 is the URL's or the model's fault, the same for every item: one error naming
    the URL, after one request, instead of every item failing in turn."""
    with FaultServer(lifetime_s=30) as server:
        cfg = config(server, tmp_path / "cache", base_url=server.base_url.replace("/v1", "/nope"))
        with pytest.raises(UnreachableError, match=r"HTTP 404 .*/nope/chat/completions.*judge\.base_url"):
            make_judge(cfg).judge(items(20), progress=False)
        assert server.n_requests <= cfg.concurrency


def test_other_client_errors_fail_the_item_alone(tmp_path, api_key):
    """A 400 (this prompt is too long, say) fails that item, with the server's words, and no retry."""
    import httpx

    from sal.judge.openai_http import OpenAIJudge

    def reply(request):
        if b"premise-1 " in request.content:
            return httpx.Response(400, json={"error": {"message": "context too long"}})
        return httpx.Response(200, json={"choices": [{"index": 0, "finish_reason": "stop", "message": {
            "role": "assistant", "content": '<judgement>{"Category": "No"}</judgement>'}}]})

    cfg = JudgeConfig(backend="openai", base_url="http://127.0.0.1:9/v1", model="m", api_key_env=KEY_ENV,
                      cache_dir=str(tmp_path / "cache"))
    judge = OpenAIJudge(cfg, transport=httpx.MockTransport(reply))
    results = judge.judge(items(3), progress=False)
    assert [r.status for r in results] == [OK, FAILED, OK]
    assert "HTTP 400" in results[1].error and "context too long" in results[1].error
    assert judge.tally.n_requests == 3


def test_retry_policy_on_a_scripted_transport(api_key, caplog):
    """Each item meets its own script of answers (no sockets: timeouts and streaming are the
    fault server's). Retry-After is waited, and capped at retry_after_max_s with one warning;
    a malformed body is asked again; an answer that arrived is never asked again; an item
    that never succeeds gives up after max_retries + 1 attempts, saying why; the back-off
    waits at least half its nominal length."""
    import httpx

    from sal.judge.openai_http import OpenAIJudge

    def ok(i):
        return httpx.Response(200, json={"choices": [{"index": 0, "finish_reason": "stop", "message": {
            "role": "assistant", "content": f'<judgement>{{"Category": "{expected_category(i)}"}}</judgement>'}}]})

    script = {0: [lambda i: httpx.Response(429, headers={"Retry-After": "0.25"}), ok],
              1: [lambda i: httpx.Response(200, content=b"<html>bad gateway</html>"), ok],
              2: [lambda i: httpx.Response(500)],
              3: [ok],
              4: [lambda i: httpx.Response(429, headers={"Retry-After": "3600"}), ok],
              5: [lambda i: httpx.Response(503), ok]}
    arrivals = {i: [] for i in script}

    def reply(request):
        i = item_index(json.loads(request.content)["messages"][0]["content"])
        arrivals[i].append(time.monotonic())
        steps = script[i]
        return steps[min(len(arrivals[i]), len(steps)) - 1](i)

    cfg = JudgeConfig(backend="openai", base_url="http://127.0.0.1:9/v1", model="m", api_key_env=KEY_ENV,
                      concurrency=2, max_retries=3, backoff_base_s=0.2, backoff_max_s=0.2, retry_after_max_s=0.5,
                      max_parse_retries=0, cache_dir=None)
    caplog.set_level(logging.WARNING, logger="sal.judge")
    judge = OpenAIJudge(cfg, transport=httpx.MockTransport(reply))
    results = judge.judge(items(len(script)), progress=False)
    assert [r.status for r in results] == [OK, OK, FAILED, OK, OK, OK]
    assert [r.label for r in results if r.ok] == [expected_category(i) for i in (0, 1, 3, 4, 5)]
    assert "gave up after 4 attempts" in results[2].error and "HTTP 500" in results[2].error
    assert {i: len(t) for i, t in arrivals.items()} == {0: 2, 1: 2, 2: 4, 3: 1, 4: 2, 5: 2}
    assert (judge.tally.n_requests, judge.tally.n_retries) == (13, 7)
    gap = {i: t[1] - t[0] for i, t in arrivals.items() if len(t) > 1}
    assert gap[0] >= 0.25 - 0.01  # Retry-After, longer than the back-off
    assert 0.5 - 0.01 <= gap[4] < 1.5  # Retry-After: 3600, capped
    assert caplog.text.count("Retry-After") == 1 and "3600" in caplog.text
    assert gap[1] >= 0.1 - 0.01 and gap[5] >= 0.1 - 0.01  # back-off: uniform in [d/2, d], d = 0.2 s


def test_missing_key_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.delenv(KEY_ENV, raising=False)
    with FaultServer(lifetime_s=30) as server:
        with pytest.raises(CredentialError, match=KEY_ENV):
            make_judge(config(server, tmp_path)).judge(items(1), progress=False)
        assert server.n_requests == 0


def test_duplicate_keys_rejected(tmp_path, api_key):
    with FaultServer(lifetime_s=30) as server:
        with pytest.raises(ValueError, match="duplicate"):
            make_judge(config(server, tmp_path)).judge(items(2) + items(1), progress=False)


def test_retry_after_header_forms():
    assert parse_retry_after("2") == 2.0 and parse_retry_after("0.25") == 0.25
    assert parse_retry_after(None) is None and parse_retry_after("soon") is None
    later = time.strftime("%a, %d %b %Y %H:%M:%S GMT", time.gmtime(time.time() + 30))
    assert 25 <= parse_retry_after(later) <= 31


CHILD = textwrap.dedent("""
    import sys
    from sal.config.judge import JudgeConfig
    from sal.judge import make_judge, rule_item
    url, cache = sys.argv[1], sys.argv[2]
    cfg = JudgeConfig(backend="openai", base_url=url, model="fake-r1", api_key_env=None, concurrency=2,
                      timeout_s=2.0, cache_dir=cache)
    items = [rule_item(i, -1, i + 1000, [f"premise-{i} text"], f"conclusion of {i}") for i in range(40)]
    make_judge(cfg).judge(items, progress=False)
    print("FINISHED")
""")


def test_killed_run_resumes_without_loss_or_duplicates(tmp_path):
    n = 40
    cache_dir = tmp_path / "cache"
    with FaultServer(latency_s=0.05, answer=answer, lifetime_s=60) as server:
        env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
        child = subprocess.Popen([sys.executable, "-c", CHILD, server.base_url, str(cache_dir)], env=env,
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 30
        while sum(server.ok_answers.values()) < n // 3 and time.monotonic() < deadline and child.poll() is None:
            time.sleep(0.005)
        child.send_signal(signal.SIGKILL)
        out, err = child.communicate(timeout=10)
        assert b"FINISHED" not in out, "the child finished before it could be killed"
        assert sum(server.ok_answers.values()) < n

        cache = JudgeCache(cache_dir)
        survivors = cache.keys()
        assert 0 < len(survivors) < n
        assert all(cache.get(k) is not None for k in survivors)  # no torn record

        server.reset()
        cfg = JudgeConfig(backend="openai", base_url=server.base_url, model="fake-r1", api_key_env=None,
                          concurrency=2, timeout_s=2.0, cache_dir=str(cache_dir))
        results = make_judge(cfg).judge(items(n), progress=False)
        assert [r.key for r in results] == [it.key for it in items(n)]
        for r in results:
            i = int(r.key.split("/")[1].split(",")[0])
            assert r.status == (UNPARSEABLE if i == 47 else OK)
            if r.ok:
                assert r.label == expected_category(i)
        # Exactly the questions whose answers had not reached the cache were asked again.
        assert server.n_requests == n - len(survivors)
        assert max(server.attempts.values()) == 1
        assert len(cache) == n


@pytest.mark.parametrize("finish_reason, status", [("stop", OK), ("length", UNPARSEABLE), (None, OK)])
def test_an_answer_cut_at_the_token_limit_is_never_a_label(tmp_path, api_key, finish_reason, status):
    """A reply whose text happens to hold a judgement but stopped at max_tokens is
    unparseable, from the server and again from the cache."""
    import httpx

    from sal.judge.openai_http import OpenAIJudge

    def reply(request):
        choice = {"index": 0, "message": {"role": "assistant", "content":
                                           '<judgement>{"Category": "Strict"}</judgement> and then more'}}
        if finish_reason:
            choice["finish_reason"] = finish_reason
        return httpx.Response(200, json={"choices": [choice], "usage": {"prompt_tokens": 5, "completion_tokens": 9}})

    cfg = JudgeConfig(backend="openai", base_url="http://127.0.0.1:9/v1", model="m", api_key_env=KEY_ENV,
                      max_parse_retries=0, cache_dir=str(tmp_path / "cache"))
    for _ in range(2):  # the second pass answers from the cache
        result = OpenAIJudge(cfg, transport=httpx.MockTransport(reply)).judge(items(1), progress=False)[0]
        assert result.status == status
        assert (result.label == "Strict") == (status == OK)
        assert ("finish_reason=length" in (result.error or "")) == (finish_reason == "length")


def test_requests_do_not_flood_the_stage_log(tmp_path, api_key, caplog):
    import httpx

    from sal.judge.openai_http import OpenAIJudge

    def reply(request):
        return httpx.Response(200, json={"choices": [{"index": 0, "finish_reason": "stop", "message": {
            "role": "assistant", "content": '<judgement>{"Category": "No"}</judgement>'}}]})

    cfg = JudgeConfig(backend="openai", base_url="http://127.0.0.1:9/v1", model="m", api_key_env=KEY_ENV,
                      cache_dir=str(tmp_path / "cache"))
    with caplog.at_level(logging.INFO):
        results = OpenAIJudge(cfg, transport=httpx.MockTransport(reply)).judge(items(20), progress=False)
    assert [r.status for r in results] == [OK] * 20
    assert not [r for r in caplog.records if r.name.startswith("httpx") and r.levelno < logging.WARNING]
