"""The training plan's memory estimate against the measured peak of real CPU training steps.

Each shape runs in its own process (tests/training/_measure_peak.py): a tiny random Llama
of width D feeds a crosscoder of C features at L layers through the real training loop
(Lightning, the shuffle buffer, AdamW) for three steps; the peak resident memory of the
training (VmHWM after a reset, minus the resident memory before it) is compared with
sal.training.plan's estimate of the same parts (crosscoder state, one micro-batch, the
shuffle buffer). tests/training/test_plan.py asserts the same comparison at smaller shapes.

    .venv/bin/python benchmarks/plan_memory_bench.py
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from tempfile import TemporaryDirectory

import torch

ROOT = Path(__file__).resolve().parents[1]
SHAPES = {
    "state-heavy (L4 D128 C32768, 64 tokens)": ["--layers", "4", "--d-model", "128", "--features", "32768",
                                                "--micro-instances", "2"],
    "activation-heavy (L8 D64 C8192, 2048 tokens)": ["--layers", "8", "--d-model", "64", "--features", "8192",
                                                     "--micro-instances", "16", "--tokens-per-instance", "128",
                                                     "--buffer-tokens", "4096"],
    "buffer-heavy (L6 D256 C4096, 65536-token buffer)": ["--layers", "6", "--d-model", "256", "--features", "4096",
                                                         "--micro-instances", "4", "--tokens-per-instance", "64",
                                                         "--buffer-tokens", "65536"],
    "larger (L8 D256 C16384, 1024 tokens)": ["--layers", "8", "--d-model", "256", "--features", "16384",
                                             "--micro-instances", "8", "--tokens-per-instance", "128",
                                             "--buffer-tokens", "8192"],
}


def main() -> None:
    print(f"CPU capability {torch.backends.cpu.get_cpu_capability()}, load average {os.getloadavg()[0]:.2f}")
    print(f"{'shape':52s} {'estimate GiB':>12s} {'measured GiB':>12s} {'ratio':>6s}")
    with TemporaryDirectory() as tmp:
        for i, (name, args) in enumerate(SHAPES.items()):
            out = subprocess.run([sys.executable, str(ROOT / "tests/training/_measure_peak.py"), f"{tmp}/{i}", *args],
                                 capture_output=True, text=True, check=False).stdout
            line = next((x for x in out.splitlines() if x.startswith("PEAK ")), None)
            if line is None:
                print(f"{name:52s} failed:\n{out[-2000:]}")
                continue
            r = json.loads(line[5:])
            print(f"{name:52s} {r['estimate_gib']:12.3f} {r['measured_gib']:12.3f} "
                  f"{r['estimate_gib'] / r['measured_gib']:6.2f}")


if __name__ == "__main__":
    main()
