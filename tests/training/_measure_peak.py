"""Peak memory of real CPU training steps against the training plan's estimate: the
subprocess behind tests/training/test_plan.py and benchmarks/plan_memory_bench.py.

    python tests/training/_measure_peak.py RUN_DIR --layers 4 --d-model 128 --features 32768 \
        --micro-instances 2 --tokens-per-instance 32 --buffer-tokens 1024

Prints one JSON line: the estimate by component (GiB), and the measured peak resident
memory of training minus what the process held before training started (the subject
model, the corpus, the libraries), read from /proc/self/status (VmHWM, reset first).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from lightning.pytorch.callbacks import Callback  # noqa: E402

from sal.config.crosscoder import CrosscoderConfig, OptimConfig  # noqa: E402
from sal.config.trainer import TrainerConfig  # noqa: E402
from sal.models import tiny_llama, tiny_tokenizer  # noqa: E402
from sal.training.plan import GIB, make_plan  # noqa: E402
from sal.training.run import _d_model, describe_model, train_crosscoder  # noqa: E402


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {field}")


class PeakAtTrainEnd(Callback):
    """VmHWM when training ends (before the export, which copies the weights)."""

    def __init__(self) -> None:
        self.peak_kib = 0

    def on_train_end(self, trainer, pl_module) -> None:
        self.peak_kib = _status_kib("VmHWM")


def texts(n: int) -> list[str]:
    return [f"{chr(65 + i % 26)}{chr(97 + i // 26 % 26)} problem {i}: the square root of {i * i} is {i}; "
            f"{i} + {i} = {2 * i}, and {i} * 3 = {3 * i}." for i in range(n)]


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("run_dir")
    p.add_argument("--layers", type=int, required=True)
    p.add_argument("--d-model", type=int, required=True)
    p.add_argument("--features", type=int, required=True)
    p.add_argument("--micro-instances", type=int, required=True)
    p.add_argument("--tokens-per-instance", type=int, default=32)
    p.add_argument("--buffer-tokens", type=int, default=1024)
    p.add_argument("--steps", type=int, default=3)
    args = p.parse_args()
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "2")))
    tok = tiny_tokenizer()
    model = tiny_llama(tok, n_layers=args.layers, d_model=args.d_model)
    layers = list(range(args.layers))
    cc = CrosscoderConfig(n_features=args.features, dead_window_tokens=10**6)
    opt = OptimConfig(max_steps=args.steps, batch_instances=args.micro_instances, tokens_per_instance=args.tokens_per_instance,
                      max_tokens_per_instance=64, docs_per_forward=8, shuffle_buffer_tokens=args.buffer_tokens,
                      checkpoint_every_n_steps=10**6, lr=1e-3)
    tcfg = TrainerConfig(accelerator="cpu", devices=1, enable_progress_bar=False, log_every_n_steps=1)
    plan = make_plan(cc, opt, describe_model(model, _d_model(model)), tcfg, layers)
    corpus = texts(400)
    peak = PeakAtTrainEnd()
    Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current resident size
    baseline_kib = _status_kib("VmRSS")
    train_crosscoder(cc, opt, tcfg, model, tok, corpus, layers, args.run_dir, model_name="measure", callbacks=[peak],
                     plan=plan)
    mem = plan.memory_gib
    # The process held the subject model's weights before the baseline was read.
    estimate = plan.per_device_peak_gib - mem["subject_weights"]
    print("PEAK " + json.dumps({"estimate_gib": estimate, "measured_gib": (peak.peak_kib - baseline_kib) * 1024 / GIB,
                                "memory_gib": mem, "micro_batch_tokens": plan.micro_batch_tokens}), flush=True)


if __name__ == "__main__":
    main()
