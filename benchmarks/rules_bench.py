"""Benchmark of the rule counter (sal.rules.count_rules) against the paper's Algorithm 2.

Synthetic layer counts with a fixed seed: feature popularity Zipf-distributed over
C = 32768 features (exponent --zipf, default 1), each sample draws its active features without
replacement by popularity (a Poisson number, mean 32 or 150 per sample), layer counts
uniform in 1..8. Workloads (paper-scale rule set of 3267 samples):

  (i)  ~32 active features per sample (last-token aggregation), default filters;
  (ii) ~150 active features per sample (whole-trace aggregation), min_premise_count=30.

Each workload runs in a fresh subprocess so its peak RSS (ru_maxrss) is honest. Then a
straightforward implementation of Algorithm 2 (per-sample masks over the active features, an
einsum for two premises, dictionary accumulation) runs on a subsample of each workload; its
rules are checked to equal count_rules' on that subsample, and the throughput ratio in
samples/s is printed (engine on the full workload / reference on the subsample), by wall clock
and per CPU-second (the latter is steadier on a shared machine).

The engine's one-time start-up in the fresh process (its first call, on two samples: the
native kernel is a shared object compiled at install time, so this is milliseconds) is timed
apart and printed; the ratio is given with and without it.

usage: .venv/bin/python benchmarks/rules_bench.py [--ref-samples-i 200] [--ref-samples-ii 8]
       [--engine auto|native|numpy]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from collections import defaultdict

import numpy as np
import pandas as pd
import scipy.sparse as sp

N_SAMPLES = 3267
N_FEATURES = 32768
MAX_LAYERS = 8
WORKLOADS = {
    "i": dict(active=32, min_premise_count=1, label="(i)  ~32 active/sample, defaults"),
    "ii": dict(active=150, min_premise_count=30, label="(ii) ~150 active/sample, min_premise_count=30"),
}


def synthetic_layer_counts(n_samples: int, mean_active: float, seed: int, zipf: float = 1.0) -> sp.csr_matrix:
    """Fixed-seed layer counts [n_samples, C]: Zipf feature popularity, counts 1..8."""
    rng = np.random.default_rng(seed)
    log_p = -zipf * np.log(np.arange(1, N_FEATURES + 1))
    feature_of_rank = rng.permutation(N_FEATURES)  # popularity is not tied to the feature id
    n_active = np.clip(rng.poisson(mean_active, size=n_samples), 1, N_FEATURES)
    rows, cols = [], []
    for start in range(0, n_samples, 256):
        stop = min(start + 256, n_samples)
        # Gumbel top-k = sampling without replacement proportionally to popularity
        keys = log_p[None, :] + rng.gumbel(size=(stop - start, N_FEATURES))
        for i, k in zip(range(start, stop), n_active[start:stop]):
            top = np.argpartition(-keys[i - start], k - 1)[:k]
            cols.append(feature_of_rank[top])
            rows.append(np.full(k, i))
    r, c = np.concatenate(rows), np.concatenate(cols)
    values = rng.integers(1, MAX_LAYERS + 1, size=len(r)).astype(np.int32)
    return sp.csr_matrix((values, (r, c)), shape=(n_samples, N_FEATURES))


def reference_algorithm2(layer_counts: sp.csr_matrix, beta: float = 1.0, min_premise_count: int = 1, min_rule_count: int = 1) -> pd.DataFrame:
    """The paper's Algorithm 2 done plainly: masks over each sample's active features, an
    einsum for pairs of premises, and Python dictionaries for the counts."""
    counts: dict[tuple, dict[int, int]] = defaultdict(lambda: defaultdict(int))
    for n in range(layer_counts.shape[0]):
        row = layer_counts[n]
        active, x = row.indices, row.data  # A = {c : x[c] > 0}
        for p in active:
            counts[(int(p),)][-1] += 1
        for i, j in zip(*np.triu_indices(len(active), 1)):  # count(P) of pairs
            counts[(int(active[i]), int(active[j]))][-1] += 1
        smaller = (x[None, :] < x[:, None]).astype(np.uint8)  # [premise, conclusion]
        for p, q in zip(*np.nonzero(smaller)):
            counts[(int(active[p]),)][int(active[q])] += 1
        prod = np.einsum("ac,bc->abc", smaller, smaller)
        r, c = np.tril_indices(len(active))
        prod[r, c, :] = 0  # enforce p1 < p2, drop diagonals
        for a, b, q in zip(*np.nonzero(prod)):
            counts[(int(active[a]), int(active[b]))][int(active[q])] += 1
    rows = []
    for premise, concl in counts.items():
        n_premise = concl[-1]
        if n_premise < min_premise_count:
            continue
        p1, p2 = (premise[0], -1) if len(premise) == 1 else premise
        for q, n_rule in concl.items():
            if q != -1 and n_rule >= min_rule_count:
                rows.append((p1, p2, q, n_premise, n_rule))
    rows.sort()
    df = pd.DataFrame(rows, columns=["p1", "p2", "q", "n_premise", "n_rule"]).astype(np.int32)
    df["prob"] = (df["n_rule"] + beta) / (df["n_premise"] + 2 * beta)
    return df


def _maxrss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux


def worker(name: str, seed: int, zipf: float, memory_budget_gb: float, engine: str = "auto") -> None:
    """Run one workload and print its measurements as JSON (called in a fresh process)."""
    from sal.rules import count_rules, native

    spec = WORKLOADS[name]
    layer_counts = synthetic_layer_counts(N_SAMPLES, spec["active"], seed, zipf)
    # One-time cost of the engine's first call in a fresh process, timed apart on two samples.
    t0 = time.perf_counter()
    count_rules(layer_counts[:2], engine=engine)
    kernel_load = time.perf_counter() - t0
    rss_before = _maxrss_gib()
    t0 = time.perf_counter()
    cpu0 = time.process_time()
    rules = count_rules(layer_counts, min_premise_count=spec["min_premise_count"], memory_budget_gb=memory_budget_gb,
                        engine=engine)
    wall = time.perf_counter() - t0
    cpu = time.process_time() - cpu0
    print(json.dumps({
        "workload": name,
        "active_per_sample": layer_counts.nnz / N_SAMPLES,
        "rules": len(rules),
        "one_premise_rules": int((rules["p2"].to_numpy() == -1).sum()),
        "wall_s": wall,
        "cpu_s": cpu,
        "peak_rss_gib": _maxrss_gib(),
        "rss_before_count_gib": rss_before,
        "engine": "numpy (chunked sparse products)" if engine == "numpy" or not native.available() else "native kernel",
        "kernel_load_s": kernel_load,
    }))


def run_worker(name: str, args) -> dict:
    cmd = [sys.executable, __file__, "--worker", name, "--seed", str(args.seed), "--zipf", str(args.zipf),
           "--memory-budget-gb", str(args.memory_budget_gb), "--engine", args.engine]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--zipf", type=float, default=1.0)
    parser.add_argument("--memory-budget-gb", type=float, default=4.0)
    parser.add_argument("--ref-samples-i", type=int, default=200)
    parser.add_argument("--ref-samples-ii", type=int, default=8)
    parser.add_argument("--engine", choices=["auto", "native", "numpy"], default="auto",
                        help="count_rules engine (auto: the native kernel when it is built)")
    parser.add_argument("--workloads", nargs="+", default=["i", "ii"], choices=list(WORKLOADS))
    parser.add_argument("--worker", choices=list(WORKLOADS), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args.worker, args.seed, args.zipf, args.memory_budget_gb, args.engine)
        return

    from sal.rules import count_rules

    print(f"load average at start: {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
    print(f"rule set: {N_SAMPLES} samples, C = {N_FEATURES}, Zipf exponent {args.zipf}, layer counts 1..{MAX_LAYERS}, seed {args.seed}")
    for name in args.workloads:
        spec = WORKLOADS[name]
        print(f"\n== workload {spec['label']}")
        m = run_worker(name, args)
        print(f"  count_rules (fresh process): {m['wall_s']:.2f} s wall, {m['cpu_s']:.2f} s CPU, "
              f"{m['rules']:,} rules ({m['one_premise_rules']:,} with one premise), "
              f"{m['active_per_sample']:.1f} active features/sample; engine: {m['engine']}")
        print(f"  one-time start-up in the fresh process (first call, 2 samples): {m['kernel_load_s'] * 1e3:.1f} ms")
        print(f"  peak RSS {m['peak_rss_gib']:.2f} GiB (of which {m['rss_before_count_gib']:.2f} GiB before counting: "
              "interpreter, libraries, synthetic data)")
        engine_sps = N_SAMPLES / m["wall_s"]
        engine_sps_cold = N_SAMPLES / (m["wall_s"] + m["kernel_load_s"])
        print(f"  throughput: {m['rules'] / m['wall_s']:,.0f} rules/s, {engine_sps:,.0f} samples/s")

        n_ref = args.ref_samples_i if name == "i" else args.ref_samples_ii
        sub = synthetic_layer_counts(N_SAMPLES, spec["active"], args.seed, args.zipf)[:n_ref]
        t0, cpu0 = time.perf_counter(), time.process_time()
        ref = reference_algorithm2(sub)
        ref_wall, ref_cpu = time.perf_counter() - t0, time.process_time() - cpu0
        got = count_rules(sub, engine=args.engine)  # same subsample, same (default) filters
        try:
            pd.testing.assert_frame_equal(got, ref)
            agree = "identical"
        except AssertionError as err:
            agree = f"MISMATCH: {err}"
        ref_sps = n_ref / ref_wall
        print(f"  reference Algorithm 2 on the first {n_ref} samples (min_premise_count=1, it does not prune): "
              f"{ref_wall:.2f} s, {ref_sps:,.2f} samples/s, {len(ref):,} rules; count_rules on them: {agree}")
        print(f"  speed ratio (samples/s, engine on all {N_SAMPLES} samples / reference): {engine_sps / ref_sps:,.0f}x wall-clock, "
              f"{(N_SAMPLES / m['cpu_s']) / (n_ref / ref_cpu):,.0f}x per CPU-second (less sensitive to a shared machine), "
              f"{engine_sps_cold / ref_sps:,.0f}x wall-clock counting the one-time start-up")


if __name__ == "__main__":
    main()
