"""The README's main job: train -> extract_rules -> evaluate on the offline default, for the
subject model and for its null control (same architecture, random weights, same text), then
one Markdown report beside both.

    python -m sal.demo [extra Hydra overrides passed to every stage]
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from sal.report import write_demo_report

ROOT = Path(__file__).resolve().parents[1]
# The offline default reads packaged files only; make any accidental hub access fail fast.
OFFLINE_ENV = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
STAGES = ("train.py", "extract_rules.py", "evaluate.py")
RUNS = {
    "SmolLM2-135M-Instruct": ["run_name=default"],
    # The null model reads the text its pretrained twin wrote: only the weights differ.
    "null model (random weights)": ["run_name=null_model", "model.init=random", "data.responses_from=pretrained"],
}


def main(argv: list[str]) -> int:
    started = time.perf_counter()
    roots = [a.split("=", 1)[1] for a in argv if a.startswith("paths.runs_root=")]
    runs_root = ROOT / (roots[-1] if roots else "runs")
    run_dirs = {}
    for label, overrides in RUNS.items():
        for stage in STAGES:
            cmd = [sys.executable, str(ROOT / stage), *overrides, *argv]
            print(f"\n=== {label}: {' '.join(cmd[1:])}", flush=True)
            t0 = time.perf_counter()
            subprocess.run(cmd, cwd=ROOT, check=True, env=OFFLINE_ENV)
            print(f"=== {stage} done in {time.perf_counter() - t0:.0f} s", flush=True)
        run_name = [o for o in overrides if o.startswith("run_name=")][0].split("=", 1)[1]
        run_dirs[label] = runs_root / "smollm2-135m" / run_name
    report = write_demo_report(runs_root / "demo_report.md", run_dirs)
    print(f"\nReport: {report}  (total {time.perf_counter() - started:.0f} s)")
    print(report.read_text().split("\n## ")[0])
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
