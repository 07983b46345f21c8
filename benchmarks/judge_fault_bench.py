"""The openai judge under faults: the acceptance figures of issue 14 (items 5-7).

Four scenarios against the test suite's fault server (tests/judge/fault_server.py) on
127.0.0.1, each in a fresh directory (run dir, cache, logs):

1. fault run: N rule judgments through 429 with Retry-After, Retry-After: 3600, 500, stalls
   before and inside the answer, dropped connections, truncated, malformed, unfinished and
   choice-less bodies, and items that never succeed; streamed and not streamed;
2. SIGKILL and restart: a judging subprocess killed mid-batch, then a rerun on its cache;
3. a 401 whose body echoes the (wrong) key;
4. dead endpoints: refused port, TLS to a plain-HTTP server, a host that does not resolve.

Targets: lost 0, duplicated 0, re-sent after restart 0, peak concurrency <= limit, key hits 0
(the 401 among the faults: the batch stops with one error and the key is nowhere).

    .venv/bin/python benchmarks/judge_fault_bench.py [--n 330] [--concurrency 8]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repo root: tests.judge.*

from tests.judge import fault_run as fr  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=330, help="judgments in the fault run")
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--json", action="store_true", help="print every figure as JSON too")
    args = parser.parse_args()

    figures = {}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        for stream in (True, False):
            name = f"fault_run_{'stream' if stream else 'plain'}"
            figures[name] = fr.fault_run(tmp / name, n=args.n, stream=stream, concurrency=args.concurrency)
        figures["kill_restart"] = fr.kill_restart(tmp / "kill", n=max(60, args.n // 2))
        figures["wrong_key_401"] = fr.wrong_key(tmp / "401", n=args.n)
        figures["dead_endpoint"] = fr.dead_endpoint(tmp / "dead", n=args.n)

    print(f"{'scenario':<22} {'items':>5} {'lost':>4} {'dup':>3} {'resent':>6} {'peak/limit':>10} {'keyhits':>7}  "
          f"other")
    for name in ("fault_run_stream", "fault_run_plain"):
        f = figures[name]
        print(f"{name:<22} {f['items']:>5} {f['lost']:>4} {f['duplicated']:>3} {'-':>6} "
              f"{f['peak_concurrency']:>5}/{f['concurrency_limit']:<4} {f['key_hits']:>7}  "
              f"labelled {f['labelled']}, failed with reason {f['failed_with_reason']}, requests {f['requests']}, "
              f"max attempts/item {f['max_attempts_per_item']} (limit {f['attempt_limit']}), "
              f"longest stall {f['longest_stall_s']} s (read timeout {f['stall_bound_s']} s), "
              f"after Retry-After 3600: {f['longest_wait_after_retry_after_3600_s']} s "
              f"(cap {f['retry_after_cap_s']} s), {f['wall_s']} s")
    k = figures["kill_restart"]
    print(f"{'kill -9 + restart':<22} {k['items']:>5} {k['lost']:>4} {k['duplicated']:>3} "
          f"{k['resent_after_restart']:>6} {'-':>10} {k['key_hits']:>7}  "
          f"saved before kill {k['saved_before_kill']}, answered but unsaved {k['asked_again_not_saved']}, "
          f"requests after restart {k['requests_after_restart']}, temporaries left {k['temporaries_left']}")
    w = figures["wrong_key_401"]
    print(f"{'401 echoing the key':<22} {w['items']:>5} {'-':>4} {'-':>3} {'-':>6} "
          f"{w['requests']:>5}/{w['concurrency_limit']:<4} {w['key_hits']:>7}  "
          f"{w['error']} after {w['requests']} requests in {w['seconds']} s; key in message: {w['key_in_message']}")
    print(f"  message: {w['message']}")
    for case, d in figures["dead_endpoint"].items():
        print(f"dead endpoint, {case}: {d['attempts']} attempts, {d['seconds']} s: {d['message']}")
    if args.json:
        print(json.dumps(figures, indent=1))

    bad = []
    for name in ("fault_run_stream", "fault_run_plain", "kill_restart"):
        f = figures[name]
        bad += [f"{name}.{k}" for k in ("lost", "duplicated", "resent_after_restart", "key_hits", "beyond_retries")
                if f.get(k)]
        if f.get("peak_concurrency", 0) > f.get("concurrency_limit", 1 << 30):
            bad.append(f"{name}.peak_concurrency")
    if w["key_hits"] or w["key_in_message"] or w["error"] != "CredentialError":
        bad.append("wrong_key_401")
    print("targets met" if not bad else f"TARGETS MISSED: {', '.join(bad)}")
    sys.exit(1 if bad else 0)


if __name__ == "__main__":
    main()
