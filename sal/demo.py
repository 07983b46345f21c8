"""The README's main job: train -> extract_rules -> evaluate on the offline default, for the
subject model and for its null control (same architecture, random weights, same text), then
one Markdown report beside both, with the wall time of every stage.

    python -m sal.demo [extra Hydra overrides passed to every stage]

The six stages run in this one process, each as its entrypoint's Hydra app (same configs,
run directories and log files as `python train.py ...`): importing torch, transformers,
Lightning and W&B takes 10-15 s on a small CPU, paid once instead of six times.
"""

from __future__ import annotations

import gc
import os
import runpy
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# The offline default reads packaged files only; make any accidental hub access fail fast.
OFFLINE_ENV = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
STAGES = ("train.py", "extract_rules.py", "evaluate.py")
MODEL, NULL = "SmolLM2-135M-Instruct", "null model (random weights)"
RUNS = {
    # The model's evaluation reports ΔSAL against its null twin, evaluated before it.
    MODEL: ["run_name=default", "evaluate.null_twin=null_model"],
    # The null twin reads the text its pretrained twin wrote: only the weights differ.
    NULL: ["control=null_twin", "run_name=null_model"],
}
ORDER = [(MODEL, "train.py"), (MODEL, "extract_rules.py"), (NULL, "train.py"), (NULL, "extract_rules.py"),
         (NULL, "evaluate.py"), (MODEL, "evaluate.py")]
"""The null twin reads the model's responses (written by the model's train.py) and is
evaluated before the model, whose evaluation compares the two."""


def run_stage(script: str, overrides: list[str]) -> None:
    """Run an entrypoint's Hydra app in this process, as `python <script> <overrides>` would
    (a failing stage exits with its status, as the command would)."""
    from hydra.core.global_hydra import GlobalHydra

    argv = sys.argv
    sys.argv = [str(ROOT / script), *overrides]
    try:
        runpy.run_path(str(ROOT / script), run_name="__main__")
    finally:
        sys.argv = argv
        GlobalHydra.instance().clear()
        gc.collect()


def hardware_line() -> str:
    from sal.hardware import cpu_capability, native_bf16_cpu

    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    return (f"CPU capability {cpu_capability()}, native bf16 {'yes' if native_bf16_cpu() else 'no'}, "
            f"{os.cpu_count()} cores, load average {load}")


def _run_name(overrides: list[str]) -> str:
    return [o for o in overrides if o.startswith("run_name=")][-1].split("=", 1)[1]


def main(argv: list[str]) -> int:
    os.environ.update(OFFLINE_ENV)
    started = time.perf_counter()
    from sal.demo_report import format_timings, write_demo_report

    print(f"[demo] {hardware_line()}", flush=True)
    def last(key: str, default: str) -> str:
        values = [a.split("=", 1)[1] for a in argv if a.startswith(key + "=")]
        return values[-1] if values else default

    runs_root = ROOT / last("paths.runs_root", "runs")
    model = last("model", "smollm2-135m")
    timings = []
    for label, stage in ORDER:
        overrides = RUNS[label]
        print(f"\n=== {label}: {stage} {' '.join([*overrides, *argv])}", flush=True)
        t0 = time.perf_counter()
        run_stage(stage, [*overrides, *argv])
        timings.append((label, stage, time.perf_counter() - t0))
        print(f"=== {stage} done in {timings[-1][2]:.0f} s", flush=True)
    run_dirs = {label: runs_root / model / _run_name(overrides) for label, overrides in RUNS.items()}
    total = time.perf_counter() - started
    hardware = hardware_line()
    report = write_demo_report(runs_root / "demo_report.md", run_dirs, timings=timings, total_s=total,
                               hardware=hardware, null_twin=(MODEL, NULL))
    print(f"\nReport: {report}\n")
    print(report.read_text().split("\n## ")[0])
    print(format_timings(timings, total, hardware))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
