"""How long each user error takes to be reported (issue 14's target: under 5 s, before any model
loads). Each case runs the entrypoint as a user would, in a fresh process, and prints the wall
time from launch to exit, the exit status and the message. The time is mostly Python, Hydra
and torch starting: compare it with `python -c "import torch"` printed first, on the same
machine and load.

    .venv/bin/python benchmarks/user_errors_bench.py [--repeat 3]
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cases(tmp: Path) -> dict:
    hub = f"http://127.0.0.1:{_free_port()}"
    judge = f"http://127.0.0.1:{_free_port()}/v1"
    return {
        "layer index past the model": (["train.py", "model=tiny-random", "layers=custom", "layers.indices=[0,99]"], {}),
        "negative sparsity": (["train.py", "sparsity=-1"], {}),
        "hub model, hub off, not cached": (["train.py", "model=qwen2.5-0.5b"], {}),
        "hub model, hub unreachable": (["train.py", "model=qwen2.5-0.5b"],
                                       {"HF_HUB_OFFLINE": "0", "TRANSFORMERS_OFFLINE": "0", "HF_ENDPOINT": hub}),
        "judge API key not set": (["evaluate.py", "model=tiny-random", "judge=openai",
                                   "judge.api_key_env=SAL_BENCH_UNSET_KEY"], {}),
        "judge server unreachable": (["extract_rules.py", "model=tiny-random", "judge=openai",
                                      "judge.api_key_env=SAL_BENCH_KEY", f"judge.base_url={judge}"],
                                     {"SAL_BENCH_KEY": "sk-bench"}),
        "missing earlier stage": (["evaluate.py", "model=tiny-random", "judge=replay", "judge.replay_path=x.csv"], {}),
    }


def run_once(argv: list, env: dict, tmp: Path) -> tuple:
    full_env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_HOME": str(tmp / "hf"),
                "WANDB_MODE": "offline", **env}
    full_env.pop("HYDRA_FULL_ERROR", None)
    full_env.pop("SAL_BENCH_UNSET_KEY", None)
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, str(ROOT / argv[0]), *argv[1:], "logger=csv",
                           f"paths.runs_root={tmp}/runs", f"paths.cache_dir={tmp}/cache"],
                          cwd=ROOT, env=full_env, capture_output=True, text=True, timeout=300)
    elapsed = time.perf_counter() - t0
    message = next((line for line in proc.stderr.splitlines() if ": error: " in line), proc.stderr[-200:])
    return elapsed, proc.returncode, message


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--repeat", type=int, default=3)
    args = p.parse_args()
    import torch

    print(f"CPU capability {torch.backends.cpu.get_cpu_capability()}, {os.cpu_count()} cores, "
          f"load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-c", "import torch"], check=True)
    print(f"python -c 'import torch': {time.perf_counter() - t0:.2f} s")
    with tempfile.TemporaryDirectory() as tmp:
        for name, (argv, env) in cases(Path(tmp)).items():
            runs = [run_once(argv, env, Path(tmp)) for _ in range(args.repeat)]
            times = [r[0] for r in runs]
            status, message = runs[-1][1], runs[-1][2]
            print(f"\n{name}: median {statistics.median(times):.2f} s (max {max(times):.2f}), exit {status}"
                  f"{'' if max(times) < 5 and status == 2 else '   <-- over 5 s or not exit 2'}\n  {message[:300]}")
    print(f"\nload average at the end {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
