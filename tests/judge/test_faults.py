"""The openai judge under faults (issue 14, items 5-7): nothing lost, nothing paid twice, no
request beyond the retries or the concurrency limit, stalls bounded, dead endpoints and
refused keys stopped with one readable error, the key never written anywhere."""

from __future__ import annotations

import asyncio
import json
import logging
import sys
import time
from pathlib import Path

import httpx
import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))  # tests.judge.*, also when pytest runs from elsewhere

from sal.config.judge import JudgeConfig  # noqa: E402
from sal.errors import ConfigError, CredentialError, UnreachableError  # noqa: E402
from sal.judge import OK, JudgeCache, make_judge, preflight  # noqa: E402
from sal.judge.openai_http import normalise_base_url, read_stream  # noqa: E402
from tests.judge import fault_run as fr  # noqa: E402
from tests.judge.fault_server import FaultServer  # noqa: E402


@pytest.fixture
def api_key(monkeypatch):
    monkeypatch.setenv(fr.KEY_ENV, fr.KEY)
    return fr.KEY


# -- the acceptance figures ---------------------------------------------------------------------
@pytest.mark.parametrize("stream, n", [(True, 330), (False, 120)])
def test_fault_run_loses_nothing_and_keeps_every_limit(tmp_path, stream, n):
    f = fr.fault_run(tmp_path, n=n, stream=stream)
    print(json.dumps(f, indent=1))
    assert f["lost"] == 0 and f["wrong_labels"] == 0 and f["duplicated"] == 0
    assert f["labelled"] + f["failed_with_reason"] == n and f["failed_with_reason"] == n // fr.NEVER_OK_EVERY
    assert "HTTP 500" in f["failure_reason_example"]
    served = {k for k, v in f["faults_served"].items() if v}
    assert served >= set(fr.CYCLE) - ({"unfinished"} if not stream else set())
    assert f["max_attempts_per_item"] <= f["attempt_limit"] and f["beyond_retries"] == 0
    assert 2 <= f["peak_concurrency"] <= f["concurrency_limit"]
    # A 30 s stall is given up after read_timeout_s of silence (plus the server noticing).
    assert f["longest_stall_s"] < f["stall_bound_s"] + 1.0
    assert f["longest_wait_after_retry_after_3600_s"] < f["retry_after_cap_s"] + 2.0
    assert f["key_hits"] == 0


def test_killed_run_resends_nothing_it_had_answered(tmp_path):
    f = fr.kill_restart(tmp_path, n=120)
    print(json.dumps(f, indent=1))
    assert 0 < f["saved_before_kill"] < f["items"]
    assert f["resent_after_restart"] == 0 and f["lost"] == 0 and f["duplicated"] == 0
    assert f["requests_after_restart"] == f["items"] - f["saved_before_kill"]
    assert f["temporaries_left"] == 0 and f["key_hits"] == 0


def test_a_401_that_echoes_the_key_stops_the_batch_and_is_never_written(tmp_path):
    f = fr.wrong_key(tmp_path, n=100)
    print(json.dumps(f, indent=1))
    assert f["error"] == "CredentialError" and f["requests"] <= f["concurrency_limit"]
    assert fr.KEY_ENV in f["message"] and "HTTP 401" in f["message"] and "<redacted>" in f["message"]
    assert not f["key_in_message"] and f["key_hits"] == 0
    assert (tmp_path / "logs" / "evaluate.log").read_text().count("HTTP 401") >= 1


def test_dead_endpoints_stop_fast_with_their_own_cause(tmp_path):
    f = fr.dead_endpoint(tmp_path, n=300)
    print(json.dumps(f, indent=1))
    limit = JudgeConfig().max_connect_failures + 2 * 32  # plus attempts already under way
    for case, expect in {"refused": "connection refused", "tls_to_plain_http": "TLS handshake",
                         "dns": "DNS lookup"}.items():
        assert f[case]["attempts"] <= limit and f[case]["seconds"] < 15, f[case]
        assert expect in f[case]["message"] and "is unreachable" in f[case]["message"]
    assert "use http://" in f["tls_to_plain_http"]["message"]
    assert len({f[c]["message"].split("last: ")[1][:20] for c in f}) == 3


# -- timeouts, Retry-After, concurrency ----------------------------------------------------------
def test_repeated_timeouts_lower_the_concurrency(tmp_path, api_key, caplog):
    """A one-slot server behind concurrency 8: later requests wait in its queue past the
    read timeout. The judge halves its concurrency until they are answered, and says so."""
    caplog.set_level(logging.WARNING, logger="sal.judge")
    with FaultServer(latency_s=0.08, answer=fr.answer, slots=1, lifetime_s=60) as server:
        cfg = fr.judge_config(server, tmp_path / "cache", concurrency=8, read_timeout_s=0.3, max_retries=6)
        judge = make_judge(cfg)
        results = judge.judge(fr.items(24), progress=False)
    assert [r.status for r in results] == [OK] * 24
    assert judge.limit < 8 and "lowering concurrency from 8 to 4" in caplog.text
    assert server.max_in_flight <= 8


def test_a_long_retry_after_is_capped_with_one_warning(tmp_path, api_key, caplog):
    caplog.set_level(logging.WARNING, logger="sal.judge")
    with FaultServer(answer=fr.answer, faults=lambda p, a: "429_long" if a == 0 else None, lifetime_s=30) as server:
        cfg = fr.judge_config(server, tmp_path / "cache", retry_after_max_s=0.2)
        start = time.monotonic()
        results = make_judge(cfg).judge(fr.items(6), progress=False)
    assert [r.status for r in results] == [OK] * 6 and time.monotonic() - start < 5
    assert caplog.text.count("Retry-After") == 1 and "3600" in caplog.text


# -- streaming --------------------------------------------------------------------------------------
def _lines(*events: str):
    async def gen():
        for e in events:
            yield e

    return gen()


def _run(coro):
    return asyncio.run(coro)


def test_stream_events_are_read_as_openai_sends_them():
    chunk = lambda delta, finish=None: "data: " + json.dumps(  # noqa: E731
        {"choices": [{"index": 0, "delta": delta, "finish_reason": finish}]})
    events = [": keep-alive", "", chunk({"role": "assistant"}), chunk({"reasoning_content": "Hmm, "}),
              chunk({"reasoning_content": "Strict?"}), chunk({"content": "<judgement>"}), "event: ignored",
              chunk({"content": "x</judgement>"}), chunk({}, "stop"),
              "data: " + json.dumps({"choices": [], "usage": {"prompt_tokens": 7, "completion_tokens": 3}}),
              "data: [DONE]"]
    assert _run(read_stream(_lines(*events))) == ("<judgement>x</judgement>", {"prompt_tokens": 7,
                                                                               "completion_tokens": 3},
                                                  "Hmm, Strict?", "stop")
    # finish_reason without [DONE] is a complete answer; [DONE] without finish_reason too.
    assert _run(read_stream(_lines(chunk({"content": "a"}), chunk({}, "length"))))[3] == "length"
    assert _run(read_stream(_lines(chunk({"content": "a"}), "data: [DONE]")))[0] == "a"
    from sal.judge.openai_http import MalformedResponse

    for bad in ([chunk({"content": "a"})],  # cut short
                ["data: [DONE]"],  # nothing
                [chunk({"content": "a"}), 'data: {"choices": [{"delta": {"content": "x'],  # torn event
                [chunk({"content": "a"}), 'data: {"error": {"message": "overloaded"}}']):
        with pytest.raises(MalformedResponse):
            _run(read_stream(_lines(*bad)))


def test_streamed_answers_keep_reasoning_usage_and_send_what_servers_expect(tmp_path, api_key):
    with FaultServer(answer=fr.answer, split_reasoning=True, require_key=fr.KEY, lifetime_s=30) as server:
        cfg = fr.judge_config(server, tmp_path / "cache", price_per_1k_prompt=1.0)
        judge = make_judge(cfg)
        results = judge.judge(fr.items(5), progress=False)
    assert [r.label for r in results] == [fr.expected_category(i) for i in range(5)]
    assert all(b["stream"] is True and b["stream_options"] == {"include_usage": True} for b in server.bodies)
    assert judge.tally.prompt_tokens > 0 and judge.tally.n_missing_usage == 0 and judge.tally.cost_usd > 0
    cache = JudgeCache(tmp_path / "cache")
    records = [cache.get(k) for k in cache.keys()]
    assert all(r["reasoning"].startswith("Is it") and r["finish_reason"] == "stop" for r in records)
    assert all("<think>" not in r["text"] for r in records)


def test_non_streaming_mode_sends_stream_false(tmp_path, api_key):
    with FaultServer(answer=fr.answer, lifetime_s=30) as server:
        results = make_judge(fr.judge_config(server, tmp_path / "c", stream=False)).judge(fr.items(3), progress=False)
    assert [r.status for r in results] == [OK] * 3
    assert all(b["stream"] is False and "stream_options" not in b for b in server.bodies)


# -- the cache: per server, one request per question in flight --------------------------------------
def test_another_server_with_the_same_model_name_is_asked_again(tmp_path, api_key):
    with FaultServer(answer=fr.answer, lifetime_s=30) as one, FaultServer(answer=fr.answer, lifetime_s=30) as two:
        make_judge(fr.judge_config(one, tmp_path / "cache")).judge(fr.items(4), progress=False)
        make_judge(fr.judge_config(two, tmp_path / "cache")).judge(fr.items(4), progress=False)
        assert one.n_requests == 4 and two.n_requests == 4
        same = fr.judge_config(one, tmp_path / "cache", base_url=one.base_url.replace("/v1", "/v1/").upper()
                               .replace("/V1/", "/v1/"))
        make_judge(same).judge(fr.items(4), progress=False)  # one server, spelt differently
        assert one.n_requests == 4
    assert normalise_base_url("HTTPS://Api.Example.com:443/v1/") == "https://api.example.com/v1"
    assert normalise_base_url("http://h:8000/v1") != normalise_base_url("http://h:8001/v1")


def test_identical_questions_in_flight_together_are_sent_once(tmp_path, api_key):
    with FaultServer(latency_s=0.2, answer=fr.answer, lifetime_s=30) as server:
        judge = make_judge(fr.judge_config(server, tmp_path / "cache"))

        async def two_batches():
            return await asyncio.gather(judge.ajudge(fr.items(6), progress=False),
                                        judge.ajudge(fr.items(6)[2:], progress=False))

        first, second = asyncio.run(two_batches())
    assert [r.status for r in first + second] == [OK] * 10
    assert server.n_requests == 6 and max(server.attempts.values()) == 1
    assert judge.tally.n_shared == 4


# -- start-up checks --------------------------------------------------------------------------------
def _timed(fn):
    start = time.monotonic()
    try:
        fn()
    except Exception as err:  # noqa: BLE001 - returned for the assertions
        return err, time.monotonic() - start
    return None, time.monotonic() - start


def test_preflight_names_each_problem_within_seconds(tmp_path, monkeypatch):
    monkeypatch.setenv(fr.KEY_ENV, fr.WRONG_KEY)
    with FaultServer(require_key=fr.KEY, lifetime_s=30) as server, \
            FaultServer(lifetime_s=30, models_status=404) as bare:
        cfg = lambda **kw: JudgeConfig(**{**dict(backend="openai", base_url=server.base_url,  # noqa: E731
                                                 model="fault-r1", api_key_env=fr.KEY_ENV), **kw})
        cases = {
            "missing key": (cfg(api_key_env="SAL_NOT_SET_ANYWHERE"), CredentialError, "SAL_NOT_SET_ANYWHERE"),
            "refused": (cfg(base_url=f"http://127.0.0.1:{fr._free_port()}/v1"), UnreachableError,
                        "connection refused"),
            "dns": (cfg(base_url="http://sal-judge-does-not-exist.invalid/v1"), UnreachableError, "DNS lookup"),
            "tls": (cfg(base_url=server.base_url.replace("http:", "https:")), UnreachableError, "TLS handshake"),
            "wrong key": (cfg(), CredentialError, "HTTP 401"),
        }
        # A malformed URL is refused when the config is built (composition), before any preflight.
        with pytest.raises(ConfigError, match="judge.base_url"):
            cfg(base_url="127.0.0.1:8000/v1")
        for name, (config, kind, words) in cases.items():
            err, seconds = _timed(lambda: preflight(config))
            assert isinstance(err, kind) and words in str(err), (name, err)
            assert seconds < 4.5, (name, seconds)
            assert fr.WRONG_KEY not in str(err)
        assert "<redacted>" in str(_timed(lambda: preflight(cfg()))[0])
        monkeypatch.setenv(fr.KEY_ENV, fr.KEY)
        assert _timed(lambda: preflight(cfg()))[0] is None
        assert _timed(lambda: preflight(cfg(base_url=bare.base_url)))[0] is None  # no /models: fine
        assert bare.n_model_requests == 1 and bare.n_requests == 0
    # Other backends need no server and no key.
    assert _timed(lambda: preflight(JudgeConfig(backend="lexical", api_key_env="SAL_NOT_SET_ANYWHERE")))[0] is None


def test_a_stall_inside_the_stream_is_bounded_by_the_read_timeout(tmp_path, api_key):
    faults = lambda p, a: "stall_mid" if a == 0 else None  # noqa: E731
    with FaultServer(answer=fr.answer, faults=faults, stall_s=30, lifetime_s=60) as server:
        start = time.monotonic()
        results = make_judge(fr.judge_config(server, tmp_path / "c", read_timeout_s=0.4, timeout_s=60)).judge(
            fr.items(4), progress=False)
    assert [r.status for r in results] == [OK] * 4
    assert time.monotonic() - start < 3 and max(server.stall_held) < 1.5


def test_the_overall_cap_ends_a_trickling_answer(tmp_path, api_key):
    """Bytes arriving now and then keep the read timeout happy; timeout_s still ends it."""
    async def trickle(request):
        async def body():
            for _ in range(100):
                yield b": still thinking\n\n"
                await asyncio.sleep(0.05)
        return httpx.Response(200, headers={"content-type": "text/event-stream"}, content=body())

    from sal.judge.openai_http import OpenAIJudge

    cfg = JudgeConfig(backend="openai", base_url="http://127.0.0.1:9/v1", model="m", api_key_env=fr.KEY_ENV,
                      read_timeout_s=1.0, timeout_s=0.3, max_retries=1, backoff_base_s=0.01, backoff_max_s=0.01,
                      cache_dir=None)
    start = time.monotonic()
    result = OpenAIJudge(cfg, transport=httpx.MockTransport(trickle)).judge(fr.items(1), progress=False)[0]
    assert result.status == "failed" and "timeout_s=0.3" in result.error
    assert time.monotonic() - start < 2
