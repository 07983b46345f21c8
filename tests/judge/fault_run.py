"""The judge under faults, measured: the scenarios behind tests/judge/test_faults.py and
benchmarks/judge_fault_bench.py. Each returns a dict of figures.

- `fault_run`: n rule judgments against the fault server (429 with Retry-After, a 3600 s
  Retry-After, 500, stalls before and inside the answer, dropped connections, truncated,
  malformed, unfinished and choice-less bodies; a few items that never succeed). Figures:
  lost (no judgment, a label without "ok", a failure without a reason), duplicated (answers
  received twice for one question), requests beyond the retries, peak concurrency (measured
  by the server), longest stall, longest Retry-After wait, key hits in the files and logs it
  wrote.
- `kill_restart`: a judging subprocess killed with SIGKILL mid-batch, then a second run over
  the same cache. Figures: requests re-sent for items answered before the kill, lost.
- `wrong_key`: a server whose 401 echoes the key. Figures: requests sent, key hits in the
  error message, the log and every file.
- `dead_endpoint`: a refused port, a TLS handshake with a plain-HTTP server, a host name
  that does not resolve. Figures: connection attempts and seconds before the one error.
"""

from __future__ import annotations

import logging
import os
import re
import signal
import socket
import subprocess
import sys
import textwrap
import time
from collections import Counter
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Optional

from sal.config.judge import JudgeConfig
from sal.errors import CredentialError, UnreachableError
from sal.judge import CATEGORIES, FAILED, OK, JudgeCache, make_judge, rule_item
from tests.judge.fault_server import FaultServer

ROOT = Path(__file__).resolve().parents[2]
KEY_ENV = "SAL_FAULT_RUN_KEY"
KEY = "sk-faultrun-DISTINCTIVE-5d1c7e0a9b3f4e21"
WRONG_KEY = "sk-wrongkey-DISTINCTIVE-0c4f2a9e7b61d835"

# First-attempt faults, in turn; a second attempt of some items meets another one.
CYCLE = ("429", "500", "stall", "stall_mid", "drop", "truncated", "malformed", "no_choices", "unfinished",
         "429_long")
NEVER_OK_EVERY = 97  # items i % 97 == 96 always get a 500: they must end "failed", with the reason


def item_index(prompt: str) -> int:
    return int(re.search(r"premise-(\d+)\b", prompt).group(1))


def expected_category(i: int) -> str:
    return CATEGORIES[i % 3]


def answer(prompt: str) -> str:
    i = item_index(prompt)
    return (f"<think>Is it {CATEGORIES[(i + 1) % 3]}? No.</think>\n"
            f'<judgement> {{"Category": "{expected_category(i)}", "Relation/Intuition": "item {i}"}} </judgement>')


def faults(prompt: str, attempt: int) -> Optional[str]:
    i = item_index(prompt)
    if i % NEVER_OK_EVERY == NEVER_OK_EVERY - 1:
        return "500"
    if i % 2 == 0 and attempt == 0:
        return CYCLE[(i // 2) % len(CYCLE)]
    if i % 6 == 0 and attempt == 1:
        return CYCLE[(i // 6 + 3) % len(CYCLE)]
    return None


def items(n: int):
    return [rule_item(i, -1, i + 100_000, [f"premise-{i} text"], f"conclusion of {i}") for i in range(n)]


def key_hits(roots, key: str) -> list[str]:
    """Files under `roots` whose bytes hold `key`."""
    needle = key.encode()
    return [str(p) for root in roots for p in Path(root).rglob("*") if p.is_file() and needle in p.read_bytes()]


@contextmanager
def env(**values: Optional[str]) -> Iterator[None]:
    old = {k: os.environ.get(k) for k in values}
    os.environ.update({k: v for k, v in values.items() if v is not None})
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@contextmanager
def log_to(path: Path) -> Iterator[None]:
    """Everything logged (DEBUG and up, every logger) also goes to `path`, as a stage log."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(path)
    handler.setLevel(logging.DEBUG)
    handler.setFormatter(logging.Formatter("%(asctime)s %(name)s %(levelname)s %(message)s"))
    root, judge_log = logging.getLogger(), logging.getLogger("sal.judge")
    old = root.level, judge_log.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    judge_log.setLevel(logging.DEBUG)
    try:
        yield
    finally:
        root.removeHandler(handler)
        handler.close()
        root.setLevel(old[0])
        judge_log.setLevel(old[1])


def write_labelled(results, path: Path) -> None:
    """The judgments as evaluate stores them (labelled_rules.parquet: label, status, error)."""
    import pandas as pd

    from sal.atomic import write_parquet

    write_parquet(pd.DataFrame({"key": [r.key for r in results], "category": [r.label for r in results],
                                "rationale": [r.text for r in results], "judge_status": [r.status for r in results],
                                "judge_error": [r.error for r in results]}), path)


def judge_config(server: FaultServer, cache_dir: Path, **kw) -> JudgeConfig:
    base = dict(backend="openai", base_url=server.base_url, model="fault-r1", api_key_env=KEY_ENV, concurrency=8,
                connect_timeout_s=2.0, read_timeout_s=0.3, timeout_s=5.0, max_retries=3, backoff_base_s=0.01,
                backoff_max_s=0.05, retry_after_max_s=0.3, max_parse_retries=1, cache_dir=str(cache_dir))
    base.update(kw)
    return JudgeConfig(**base)


def fault_run(workdir: Path, n: int = 330, stream: bool = True, concurrency: int = 8) -> dict:
    workdir = Path(workdir)
    run_dir, cache_dir, log = workdir / "run", workdir / "cache", workdir / "logs" / "judge.log"
    with FaultServer(latency_s=0.01, faults=faults, answer=answer, stall_s=30.0, retry_after="0.2",
                     require_key=KEY, split_reasoning=stream, lifetime_s=300) as server, \
            env(**{KEY_ENV: KEY}), log_to(log):
        cfg = judge_config(server, cache_dir, stream=stream, concurrency=concurrency)
        judge = make_judge(cfg, run_dir=run_dir)
        received = count_answers(judge)
        start = time.monotonic()
        results = judge.judge(items(n), progress=False)
        wall = time.monotonic() - start
        write_labelled(results, run_dir / "evaluate" / "labelled_rules.parquet")
        (run_dir / "judge_report.txt").write_text(judge.tally.summary() + "\n")
        outcomes = [o for evs in server.events.values() for _, o in evs]
        # Longest gap between a "Retry-After: 3600" and the next attempt of that prompt: the
        # capped wait, plus the wait for a free request slot.
        waits = []
        for evs in server.events.values():
            for (t, o), nxt in zip(evs, evs[1:]):
                if o == "429_long":
                    waits.append(nxt[0] - t)
        by_key = {r.key: r for r in results}
        lost = n - len(by_key) + sum(
            1 for r in results if (r.status == OK and r.label is None) or (r.status != OK and not r.error))
        wrong = sum(1 for r in results if r.ok and r.label != expected_category(item_index_of(r.key)))
        figures = {
            "items": n, "stream": stream, "wall_s": round(wall, 2),
            "labelled": sum(r.ok for r in results),
            "failed_with_reason": sum(r.status == FAILED and bool(r.error) for r in results),
            "lost": lost,
            "wrong_labels": wrong,
            "duplicated": duplicated(results, received),
            "sent_twice_by_server": sum(max(0, c - 1) for c in server.ok_answers.values()),
            "requests": server.n_requests,
            "faults_served": {f: outcomes.count(f) for f in CYCLE},
            "max_attempts_per_item": max(server.attempts.values()),
            "attempt_limit": 1 + cfg.max_retries,
            "beyond_retries": sum(max(0, c - (1 + cfg.max_retries)) for c in server.attempts.values()),
            "peak_concurrency": server.max_in_flight,
            "concurrency_limit": cfg.concurrency,
            "longest_stall_s": round(max(server.stall_held, default=0.0), 3),
            "stall_bound_s": cfg.read_timeout_s,
            "longest_wait_after_retry_after_3600_s": round(max(waits, default=0.0), 3),
            "retry_after_cap_s": cfg.retry_after_max_s,
            "failure_reason_example": next((r.error for r in results if r.status == FAILED), None),
        }
    figures["key_hits"] = len(key_hits([workdir], KEY))
    return figures


def count_answers(judge) -> Counter:
    """Complete answers the judge receives, per (prompt, sample): wraps its _complete."""
    received: Counter = Counter()
    complete = judge._complete

    async def counted(item, sample):
        completion = await complete(item, sample)
        received[(item.prompt, sample)] += 1
        return completion

    judge._complete = counted
    return received


def duplicated(results, received: Counter) -> int:
    """Answers received more than once for one question (paid twice), plus items judged
    twice in the output. (The server may still have *sent* an answer twice: when the client
    gave up on the first one in transit, a timeout, and asked again; `sent_twice_by_server`.)"""
    keys = [r.key for r in results]
    return sum(c - 1 for c in received.values() if c > 1) + len(keys) - len(set(keys))


def item_index_of(key: str) -> int:
    return int(key.split("/")[1].split(",")[0])


CHILD = textwrap.dedent("""
    import sys
    sys.path.insert(0, sys.argv[3])
    from sal.config.judge import JudgeConfig
    from sal.judge import make_judge
    from tests.judge.fault_run import items
    url, cache, n = sys.argv[1], sys.argv[2], int(sys.argv[4])
    cfg = JudgeConfig(backend="openai", base_url=url, model="fault-r1", api_key_env="SAL_FAULT_RUN_KEY",
                      concurrency=4, read_timeout_s=2.0, cache_dir=cache)
    make_judge(cfg).judge(items(n), progress=False)
    print("FINISHED", flush=True)
""")


def _answered_on_disk(cache_dir: Path) -> set[str]:
    """Prompts whose answer is on disk: stored records, and complete records in temporary
    files a kill left (the restart recovers them)."""
    cache = JudgeCache(cache_dir, recover=False)
    prompts = {cache.get(k)["prompt"] for k in cache.keys()}
    for tmp in cache._temporaries():
        if cache._complete_record(tmp):
            import json

            prompts.add(json.loads(tmp.read_bytes())["prompt"])
    return prompts


def kill_restart(workdir: Path, n: int = 120, kill_after: Optional[int] = None) -> dict:
    workdir = Path(workdir)
    cache_dir = workdir / "cache"
    kill_after = kill_after or n // 3
    with FaultServer(latency_s=0.03, answer=answer, require_key=KEY, lifetime_s=120) as server, \
            env(**{KEY_ENV: KEY}):
        child = subprocess.Popen([sys.executable, "-c", CHILD, server.base_url, str(cache_dir), str(ROOT), str(n)],
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 60
        while sum(server.ok_answers.values()) < kill_after and time.monotonic() < deadline and child.poll() is None:
            time.sleep(0.002)
        child.send_signal(signal.SIGKILL)
        out, err = child.communicate(timeout=30)
        if b"FINISHED" in out or child.returncode != -signal.SIGKILL:
            raise RuntimeError(f"the judging child was not killed mid-batch (rc={child.returncode}): {err[-500:]!r}")
        answered_first = {p for p, c in server.ok_answers.items() if c}
        on_disk = _answered_on_disk(cache_dir)
        server.reset()
        judge = make_judge(judge_config(server, cache_dir, read_timeout_s=2.0, concurrency=4))
        received = count_answers(judge)
        results = judge.judge(items(n), progress=False)
        lost = n - len(results) + sum(
            1 for r in results if not r.ok or r.label != expected_category(item_index_of(r.key)))
        figures = {
            "items": n,
            "answered_before_kill": len(answered_first),
            "saved_before_kill": len(on_disk),
            "resent_after_restart": sum(server.attempts[p] for p in on_disk),
            "asked_again_not_saved": len(answered_first - on_disk),
            "requests_after_restart": server.n_requests,
            "lost": lost,
            "duplicated": duplicated(results, received),
            "sent_twice_by_server": sum(max(0, c - 1) for c in server.ok_answers.values()),
            "temporaries_left": len(JudgeCache(cache_dir, recover=False)._temporaries()),
        }
    figures["key_hits"] = len(key_hits([workdir], KEY))
    return figures


def wrong_key(workdir: Path, n: int = 100) -> dict:
    """The server wants KEY; the user's variable holds WRONG_KEY, which the 401 echoes."""
    workdir = Path(workdir)
    log = workdir / "logs" / "evaluate.log"
    with FaultServer(latency_s=0.01, answer=answer, require_key=KEY, lifetime_s=60) as server, \
            env(**{KEY_ENV: WRONG_KEY}), log_to(log):
        cfg = judge_config(server, workdir / "cache")
        message, kind = "", None
        start = time.monotonic()
        try:
            make_judge(cfg, run_dir=workdir / "run").judge(items(n), progress=False)
        except CredentialError as err:  # the entrypoint prints the message alone, and logs it
            message, kind = str(err), type(err).__name__
            logging.getLogger("sal.pipeline").error("%s", message)
        seconds = time.monotonic() - start
        figures = {"items": n, "requests": server.n_requests, "concurrency_limit": cfg.concurrency,
                   "error": kind, "seconds": round(seconds, 3), "message": message,
                   "key_in_message": WRONG_KEY in message}
    figures["key_hits"] = len(key_hits([workdir], WRONG_KEY))
    return figures


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def dead_endpoint(workdir: Path, n: int = 300) -> dict:
    """One error per dead endpoint, naming the URL and telling the causes apart."""
    out = {}
    with FaultServer(lifetime_s=60) as plain:
        plain_https = plain.base_url.replace("http://", "https://")
        cases = {"refused": f"http://127.0.0.1:{_free_port()}/v1", "tls_to_plain_http": plain_https,
                 "dns": "http://sal-judge-does-not-exist.invalid/v1"}
        for name, url in cases.items():
            cfg = JudgeConfig(backend="openai", base_url=url, model="m", api_key_env=None, concurrency=32,
                              connect_timeout_s=2.0, cache_dir=str(Path(workdir) / name))
            judge = make_judge(cfg)
            start = time.monotonic()
            try:
                judge.judge(items(n), progress=False)
                message = "(no error)"
            except UnreachableError as err:
                message = str(err)
            out[name] = {"attempts": judge.tally.n_requests, "seconds": round(time.monotonic() - start, 3),
                         "message": message}
    return out
