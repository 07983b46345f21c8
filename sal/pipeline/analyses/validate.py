"""analysis=validate: SAL through real networks (sal.network_validation)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from sal.config.schema import SALConfig
from sal.pipeline.common import REPO_ROOT


def run_validate(cfg: SALConfig, run_dir: Path, resolved: dict) -> dict:
    """SAL through real networks: tiny transformers trained on a language with planted
    implications vs on the same text shuffled (sal.network_validation)."""
    from sal import network_validation

    net = cfg.analysis.network
    out = run_dir / "validate"
    figures_to = None
    if net.figures_dir:
        figures_to = Path(net.figures_dir)
        if not figures_to.is_absolute():  # relative to the repository, not to Hydra's working directory
            figures_to = REPO_ROOT / figures_to
    summary = network_validation.run_network_validation(net, out, figures_to=figures_to)
    table = pd.read_csv(out / "per_seed.csv")
    print(network_validation.format_table(table))
    verdict = "holds" if summary["ordering_holds_all_seeds"] else "does NOT hold"
    per_seed = "; ".join(
        f"seed {seed}: SAL sound {v['scored_sal']['sound']:.3f} / shuffled {v['scored_sal']['shuffled']:.3f} / "
        f"twin {v['scored_sal']['null_twin']:.3f}" + (f" (n/c, scored 0: {', '.join(v['not_computable'])})" if v["not_computable"] else "")
        for seed, v in summary["ordering"].items())
    print(f"[validate] sound > shuffled in SAL and delta-SAL, sound's SAL significant, on every seed: {verdict}; "
          f"{per_seed}; {summary['seconds']:.0f} s on CPU capability {summary['cpu_capability']}")
    print(f"[validate] wrote {out / 'summary.json'}, figures {list(summary['figures'].values())}"
          + (f", copied to {figures_to}" if figures_to else ""))
    return summary
