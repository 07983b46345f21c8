"""Throughput of the openai judge: 1,000 rule judgments against a local OpenAI-compatible
server answering after 100 ms, at concurrency 32.

The ideal wall time is 1000 x 0.1 / 32 = 3.125 s (perfect pipelining, zero overhead); the
ratio measured/ideal is printed (target <= 2). The server runs in its own process, so its
work does not share the judge's interpreter. A second pass over the same items measures
the cache (it must send zero requests).

    .venv/bin/python benchmarks/judge_bench.py [--n 1000] [--latency 0.1] [--concurrency 32] [--no-stream]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from sal.config.judge import JudgeConfig
from sal.judge import make_judge, rule_item

# The test suite's OpenAI-compatible server (tests/judge/fault_server.py), run as a script.
FAULT_SERVER = Path(__file__).resolve().parents[1] / "tests" / "judge" / "fault_server.py"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=1000)
    parser.add_argument("--latency", type=float, default=0.1)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--no-stream", action="store_true", help="plain JSON answers instead of server-sent events")
    args = parser.parse_args()

    server = subprocess.Popen([sys.executable, str(FAULT_SERVER), "--latency", str(args.latency),
                               "--lifetime", "300"], stdout=subprocess.PIPE, text=True)
    try:
        url = server.stdout.readline().strip()
        items = [rule_item(i, -1, i + 1, [f"Semantic: premise feature {i}"], f"Semantic: conclusion feature {i + 1}")
                 for i in range(args.n)]
        with tempfile.TemporaryDirectory() as cache_dir:
            cfg = JudgeConfig(backend="openai", base_url=url, model="bench", api_key_env=None,
                              concurrency=args.concurrency, timeout_s=30, cache_dir=cache_dir,
                              stream=not args.no_stream)
            judge = make_judge(cfg)
            start = time.perf_counter()
            results = judge.judge(items, progress=False)
            wall = time.perf_counter() - start
            ok = sum(r.ok for r in results)

            again = make_judge(cfg)
            start = time.perf_counter()
            cached = again.judge(items, progress=False)
            wall_cached = time.perf_counter() - start

        ideal = args.n * args.latency / args.concurrency
        print(f"judgments: {args.n}  latency: {args.latency * 1000:.0f} ms  concurrency: {args.concurrency}  "
              f"stream: {not args.no_stream}")
        print(f"labelled: {ok}/{args.n}  requests: {judge.tally.n_requests}")
        ratio = wall / ideal if ideal else float("inf")
        print(f"wall time: {wall:.3f} s  ideal: {ideal:.3f} s  ratio: {ratio:.2f}  (target <= 2)")
        print(f"throughput: {args.n / wall:.0f} judgments/s")
        print(f"cached rerun: {wall_cached:.3f} s, requests sent: {again.tally.n_requests}, "
              f"labels identical: {[r.label for r in cached] == [r.label for r in results]}")
        print(judge.tally.summary())
    finally:
        server.terminate()
        server.wait(10)


if __name__ == "__main__":
    main()
