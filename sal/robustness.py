"""How much SAL moves with the dictionary's seed and with the method's free settings.

A SAL comes with a bootstrap CI over the judged rules, but another crosscoder seed gives
another dictionary, other features, other rules. ``seed_spread`` combines both sources: the
headline interval pools every seed's bootstrap replicates with equal weight (draw a seed,
then a resample of its rules), and the law of total variance splits the pooled variance into
rule resampling (the mean within-seed bootstrap variance) and seed spread (the variance of the
seeds' point estimates), so the report can say which dominates. ``sensitivity_rows`` gives SAL
and ΔSAL of the same judged samples at other histogram bin counts and other minimum premise
counts.
"""

from __future__ import annotations

import warnings
from typing import Mapping, NamedTuple, Sequence

import numpy as np
import pandas as pd

from sal import metrics

Probs = Mapping[str, np.ndarray]
"""Rule probabilities by soundness category (thin categories already emptied)."""


class Spread(NamedTuple):
    """One quantity (SAL or ΔSAL) over K seeds."""

    points: tuple[float, ...]
    """Each seed's estimate."""
    mean: float
    """Mean over seeds: the headline value."""
    interval: tuple[float, float]
    """Percentile interval of the pooled replicates (rule resampling and seed spread)."""
    rule_var: float
    """Mean within-seed bootstrap variance: what resampling the judged rules moves."""
    seed_var: float
    """Variance of the seeds' estimates (ddof=1; 0 with one seed). It includes each seed's own
    rule-sampling noise, so with few seeds it overstates the dictionary's share."""

    @property
    def dominant(self) -> str:
        return "seed spread" if self.seed_var > self.rule_var else "rule resampling"

    @property
    def seed_share(self) -> float:
        total = self.rule_var + self.seed_var
        return self.seed_var / total if total > 0 else 0.0

    def to_dict(self) -> dict:
        return {"points": list(self.points), "mean": self.mean, "interval": list(self.interval),
                "rule_var": self.rule_var, "seed_var": self.seed_var, "seed_share": self.seed_share,
                "dominant": self.dominant}


def seed_spread(points: Sequence[float], replicates: Sequence[np.ndarray], ci_level: float = 0.95) -> Spread:
    """Combine K seeds' estimates and their bootstrap replicates (equal numbers per seed)."""
    if len(points) != len(replicates) or not len(points):
        raise ValueError(f"seed_spread: {len(points)} estimates and {len(replicates)} replicate sets; "
                         "give one replicate set per seed, at least one seed.")
    if len({len(r) for r in replicates}) != 1:
        raise ValueError("seed_spread: every seed needs the same number of replicates (equal weights).")
    pooled = np.concatenate([np.asarray(r, dtype=float) for r in replicates])
    tail = (1 - ci_level) / 2
    lo, hi = np.quantile(pooled, [tail, 1 - tail])
    pts = np.asarray(points, dtype=float)
    return Spread(points=tuple(float(p) for p in pts), mean=float(pts.mean()), interval=(float(lo), float(hi)),
                  rule_var=float(np.mean([np.var(r) for r in replicates])),
                  seed_var=float(np.var(pts, ddof=1)) if len(pts) > 1 else 0.0)


def sal_and_replicates(probs: Probs, bins: int, n_bootstrap: int, seed=0) -> tuple[float, np.ndarray]:
    """SAL over the non-empty categories and ``n_bootstrap`` bootstrap replicates of it."""
    kept = {k: np.asarray(v, float) for k, v in probs.items() if len(v)}
    if len(kept) < 2:
        raise ValueError(f"SAL needs two non-empty categories, got {list(kept)}.")
    counts_KB = metrics.category_counts(kept, bins)
    return metrics.soundness_aware_level(kept, bins), metrics.bootstrap_sal(counts_KB, n_bootstrap, seed)


def sal_or_nan(probs: Probs, bins: int) -> float:
    """SAL over the non-empty categories; NaN when fewer than two have rules."""
    kept = {k: v for k, v in probs.items() if len(v)}
    if len(kept) < 2:
        return float("nan")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return metrics.soundness_aware_level(kept, bins)


def with_min_premise_count(labelled: pd.DataFrame, m: int) -> pd.DataFrame:
    """The judged sample restricted to rules whose premise was seen in at least ``m`` samples
    (a uniform sample of the rules stays uniform on any subset of them)."""
    return labelled[labelled.n_premise >= m]


def sensitivity_rows(factor: str, values: Sequence, model_probs: Sequence[Sequence[Probs]],
                     null_probs: Sequence[Sequence[Probs]] | None, bins: Sequence[int] | int,
                     notes: Sequence[str] | None = None) -> list[dict]:
    """One row per value of ``factor``: SAL and ΔSAL mean and spread over the seeds.

    ``model_probs[i][k]``: the judged sample of seed k at value i (``null_probs`` alike, or
    None without null twins); ``bins``: one bin count, or one per value."""
    bins_per_value = list(bins) if isinstance(bins, (list, tuple)) else [bins] * len(values)
    rows = []
    for i, value in enumerate(values):
        b = bins_per_value[i]
        sal = np.array([sal_or_nan(p, b) for p in model_probs[i]])
        delta = (np.array([sal_or_nan(p, b) for p in null_probs[i]]) if null_probs is not None
                 else np.full(len(sal), np.nan))
        delta = sal - delta
        n_rules = [sum(len(v) for v in p.values()) for p in model_probs[i]]
        rows.append({"factor": factor, "value": value, "n_seeds": len(sal),
                     "sal_mean": _nanmean(sal), "sal_sd": _nansd(sal),
                     "delta_mean": _nanmean(delta), "delta_sd": _nansd(delta),
                     "rules_used": float(np.mean(n_rules)),
                     "computable": f"{int(np.isfinite(sal).sum())}/{len(sal)}",
                     "delta_computable": f"{int(np.isfinite(delta).sum())}/{len(sal)}",
                     "note": notes[i] if notes else ""})
    return rows


def _nanmean(x: np.ndarray) -> float:
    x = x[np.isfinite(x)]
    return float(x.mean()) if x.size else float("nan")


def _nansd(x: np.ndarray) -> float:
    x = x[np.isfinite(x)]
    return float(x.std(ddof=1)) if x.size > 1 else float("nan")
