"""A run's judged sample as SAL's input, read the same way by every analysis that uses it:
the single-model evaluation, the null-twin ΔSAL, analysis=robustness and the demo report."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Dict

import numpy as np
import pandas as pd

from sal.errors import ConfigError

log = logging.getLogger("sal")


def enforce_min_rules(probs: Dict[str, np.ndarray], min_rules: int, policy: str) -> Dict[str, np.ndarray]:
    """Treat categories with fewer than ``min_rules`` labelled rules as empty (see
    evaluate.min_rules_per_category); with policy 'error', stop and say how to fix it."""
    thin = {k: len(v) for k, v in probs.items() if 0 < len(v) < min_rules}
    if thin and policy == "error":
        raise ConfigError(
            f"Too few labelled rules in {thin} (< evaluate.min_rules_per_category={min_rules}) for a histogram: "
            f"label more rules (evaluate.n_rules_per_arity) or set evaluate.empty_category=drop.")
    if thin:
        log.warning("Dropping categories with too few labelled rules: %s", thin)
    return {k: (v[:0] if k in thin else v) for k, v in probs.items()}


def answered_rules(run_dir: Path) -> pd.DataFrame:
    """A run's judged sample, the rules the judge labelled (judge_status ok)."""
    labelled = pd.read_parquet(Path(run_dir) / "evaluate" / "labelled_rules.parquet")
    return labelled[labelled.judge_status == "ok"]


def sample_probs(answered: pd.DataFrame, ev: dict) -> Dict[str, np.ndarray]:
    """Labelled rules as rule probabilities by category, with categories under
    ``ev["min_rules_per_category"]`` emptied (``ev``: the evaluate settings, as a dict)."""
    from sal import metrics

    by_category = metrics.probs_by_category_from_frame(answered, categories=ev["categories"])
    return enforce_min_rules(by_category, ev["min_rules_per_category"], "drop")


def judged_probs(run_dir: Path, ev: dict) -> Dict[str, np.ndarray]:
    """A run's judged sample as ``sample_probs``."""
    return sample_probs(answered_rules(run_dir), ev)


def delta_to_null_twin(model_probs: Dict[str, np.ndarray], null_dir: Path, ev: dict,
                       null_probs: Dict[str, np.ndarray] | None = None) -> dict:
    """ΔSAL = SAL(model) - SAL(null twin) with its bootstrap CI and one-sided p-value
    (sal.metrics.delta_sal), both sides under the model run's evaluate settings ``ev``
    (``null_probs``: the twin's judged sample when the caller has read it already);
    {"delta": None, "not_computable": why} when a side has fewer than two categories."""
    from sal import metrics

    if null_probs is None:
        null_probs = judged_probs(null_dir, ev)
    try:
        d = metrics.delta_sal(model_probs, null_probs, bins=ev["bins"], n_bootstrap=ev["n_bootstrap"],
                              n_permutations=ev["n_permutations"], ci_level=ev["ci_level"], seed=ev["seed"])
    except ValueError as err:
        return {"delta": None, "not_computable": str(err), "null_run_dir": str(null_dir)}
    return {**d.to_dict(), "null_run_dir": str(null_dir)}
