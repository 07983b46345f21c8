"""Run a list of entrypoint invocations (Hydra multiruns included) in this one process:

    python -m sal.pipeline.sweep PLAN.json      # [[script, [override, ...]], ...]

analysis=robustness writes the plan and runs this in a child process: importing torch,
transformers, Lightning and W&B is paid once instead of once per stage and sweep.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path


def main(argv: list[str]) -> int:
    from sal.demo import run_stage

    plan = json.loads(Path(argv[0]).read_text())
    for i, (script, overrides) in enumerate(plan, 1):
        print(f"\n=== sweep {i}/{len(plan)}: {script} {' '.join(overrides)}", flush=True)
        t0 = time.perf_counter()
        run_stage(script, overrides)
        print(f"=== done in {time.perf_counter() - t0:.0f} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
