"""How many rules must the judge label? CI width and power of SAL versus labelled rules.

The population is a pool of rule probabilities per soundness category: the planted rules of
a world (``sal.synthetic.rule_pool``) or a finished run's labelled rules. A "study" labels
N rules per category, drawn with replacement from the pool; since SAL depends on the rules
only through their histogram bins, a study is a multinomial draw of N over each category's
binned pool, and thousands of studies are simulated at once.

For every N on a grid this gives
* the sampling distribution of SAL (mean, which shows the plug-in bias shrinking, and SD);
* the expected width of the bootstrap CI a study would report;
* the power to detect a SAL difference: with two pools (two worlds or two runs) by simulating
  both and applying a bootstrap Wald test to each simulated pair; with one pool and a target
  ``delta``, from the simulated SD under a normal approximation, assuming the second model's
  SAL has the same sampling SD.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import NamedTuple

import numpy as np
import pandas as pd
from scipy import optimize, stats

from sal import metrics

DEFAULT_N_GRID = (25, 50, 75, 100, 150, 200, 300, 400, 600, 800, 1200, 1600)


def _pool_histograms(pool: Mapping[str, Sequence[float]], bins: int) -> np.ndarray:
    """Normalised histogram ``[K, B]`` of each category's pool (empty categories refused)."""
    arrays, _ = metrics._prepare(pool, drop_empty=False)
    counts = metrics.category_counts(arrays, bins).astype(float)
    return counts / counts.sum(axis=1, keepdims=True)


def _simulate(rho_KB: np.ndarray, n: int, n_sim: int, n_bootstrap: int, ci_level: float, rng):
    """SAL of n_sim studies of n rules per category, and each study's bootstrap SD and CI."""
    K = rho_KB.shape[0]
    study_SKB = rng.multinomial(n, rho_KB, size=(n_sim, K))
    sal_S = metrics._jsd_batch(study_SKB / n)
    # Bootstrap inside every study at once: pvals [S, 1, K, B] broadcast over replicates.
    boot_SRKB = rng.multinomial(n, (study_SKB / n)[:, None], size=(n_sim, n_bootstrap, K))
    boot_SR = metrics._jsd_batch(boot_SRKB / n)
    tail = (1 - ci_level) / 2
    lo_S, hi_S = np.quantile(boot_SR, [tail, 1 - tail], axis=1)
    return sal_S, boot_SR.std(axis=1, ddof=1), hi_S - lo_S


class PowerAnalysis(NamedTuple):
    """CI width and power of SAL as a function of labelled rules per category."""

    table: pd.DataFrame
    """Per N: n_per_category, n_judgments, sal_mean, sal_sd, ci_width (mean bootstrap CI
    width of a study), diff_sd (SD of a SAL difference between two studies), power and, when
    tokens are known, tokens and cost_usd."""
    n_required: int | None
    """Smallest N per category reaching ``target_power`` (on the grid, else extrapolated,
    see ``_required_n``); None if the difference is 0."""
    recommendation: str
    """The budget in plain words."""
    delta: float
    """SAL difference (bits) the power refers to."""
    target_power: float
    """Power the recommendation reaches."""
    alpha: float
    """Two-sided significance level."""


def power_analysis(
    pool_a: Mapping[str, Sequence[float]],
    pool_b: Mapping[str, Sequence[float]] | None = None,
    delta: float = 0.05,
    n_grid: Sequence[int] = DEFAULT_N_GRID,
    n_sim: int = 200,
    n_bootstrap: int = 200,
    bins: int = metrics.DEFAULT_BINS,
    alpha: float = 0.05,
    target_power: float = 0.8,
    ci_level: float = 0.95,
    seed: int = 0,
    tokens_per_judgment: float | None = None,
    price_per_1k_tokens: float | None = None,
    category_shares: Mapping[str, float] | None = None,
) -> PowerAnalysis:
    """Simulate CI width and power over ``n_grid`` labelled rules per category.

    Args:
        pool_a: category -> rule probabilities of the population (a world or a run).
        pool_b: a second population; power is then simulated for its actual SAL difference
            from ``pool_a`` (``delta`` is set to that difference). Without it, power is for a
            hypothetical difference ``delta`` with ``pool_a``'s sampling SD.
        delta: SAL difference to detect, bits (ignored when ``pool_b`` is given).
        n_grid: labelled rules per category to evaluate.
        n_sim: simulated studies per grid point; n_bootstrap: replicates inside each.
        bins: histogram bins of SAL.
        alpha: two-sided level of the test; target_power: power the recommendation needs.
        tokens_per_judgment: mean judge tokens per rule; with ``price_per_1k_tokens`` it
            prices each budget.
        category_shares: fraction of judged rules landing in each category (from a run);
            labelling N per category then takes N / min(share) judgments instead of 3N.
    """
    if alpha <= 0 or alpha >= 1 or target_power <= 0 or target_power >= 1:
        raise ValueError(f"alpha={alpha} and target_power={target_power} must be in (0, 1).")
    rng = np.random.default_rng(seed)
    rho_a = _pool_histograms(pool_a, bins)
    rho_b = None if pool_b is None else _pool_histograms(pool_b, bins)
    if rho_b is not None:
        if rho_b.shape != rho_a.shape:
            raise ValueError("pool_a and pool_b must have the same categories.")
        delta = abs(float(metrics._jsd_batch(rho_a)) - float(metrics._jsd_batch(rho_b)))
    elif delta <= 0:
        raise ValueError(f"delta={delta}: the SAL difference to detect must be > 0 bits.")
    z = stats.norm.ppf(1 - alpha / 2)
    K = rho_a.shape[0]
    if category_shares and min(category_shares.values()) <= 0:
        raise ValueError(
            f"category_shares={dict(category_shares)}: every share must be > 0 to label rules "
            "in every category."
        )
    per_judgment = 1.0 / min(category_shares.values()) if category_shares else float(K)

    rows = [_grid_row(n, rho_a, rho_b, delta, z, n_sim, n_bootstrap, ci_level, rng, per_judgment,
                      tokens_per_judgment, price_per_1k_tokens) for n in sorted({int(x) for x in n_grid})]
    table = pd.DataFrame(rows)

    n_required = _required_n(table, delta, z, target_power)
    text = _recommend(
        n_required, table, delta, target_power, alpha, ci_level, per_judgment,
        tokens_per_judgment, price_per_1k_tokens,
    )
    return PowerAnalysis(table, n_required, text, delta, target_power, alpha)


def _grid_row(n: int, rho_a: np.ndarray, rho_b: np.ndarray | None, delta: float, z: float, n_sim: int,
              n_bootstrap: int, ci_level: float, rng: np.random.Generator, per_judgment: float,
              tokens_per_judgment: float | None, price_per_1k_tokens: float | None) -> dict:
    """One budget of the power table: SAL's spread, CI width and power at ``n`` rules per category."""
    sal_a, se_a, width_a = _simulate(rho_a, n, n_sim, n_bootstrap, ci_level, rng)
    if rho_b is None:
        diff_sd = sal_a.std(ddof=1) * math.sqrt(2)  # two independent estimates, equal SD
        power = stats.norm.cdf(delta / diff_sd - z) + stats.norm.cdf(-delta / diff_sd - z)
    else:
        sal_b, se_b, _ = _simulate(rho_b, n, n_sim, n_bootstrap, ci_level, rng)
        diff_sd = float(np.std(sal_a - sal_b, ddof=1))
        wald = (sal_a - sal_b) / np.sqrt(se_a**2 + se_b**2)
        power = float(np.mean(np.abs(wald) > z))
    row = {
        "n_per_category": n,
        "n_judgments": int(math.ceil(n * per_judgment)),
        "sal_mean": float(sal_a.mean()),
        "sal_sd": float(sal_a.std(ddof=1)),
        "ci_width": float(width_a.mean()),
        "diff_sd": float(diff_sd),
        "power": float(power),
    }
    if tokens_per_judgment is not None:
        row["tokens"] = row["n_judgments"] * tokens_per_judgment
        if price_per_1k_tokens is not None:
            row["cost_usd"] = row["tokens"] / 1000.0 * price_per_1k_tokens
    return row


def _required_n(table, delta, z, target_power) -> int | None:
    """Smallest grid N with enough power; beyond the grid, extrapolate the SD.

    The SD of a difference of plug-in SALs behaves like ``sqrt(a / N + b / N**2)``: the
    ``1/N`` term is the usual delta-method variance, the ``1/N**2`` term the chi-square-like
    noise that dominates near SAL = 0. Both are fitted (non-negative) on the grid and the
    equation ``delta / sd(N) = z_(1-alpha/2) + z_power`` is solved for N.
    """
    if delta <= 0:
        return None
    ok = table.loc[table["power"] >= target_power, "n_per_category"]
    if len(ok):
        return int(ok.iloc[0])
    n = table["n_per_category"].to_numpy(dtype=float)
    design = np.stack([1 / n, 1 / n**2], axis=1)
    (a, b), _ = optimize.nnls(design, table["diff_sd"].to_numpy() ** 2)
    target_var = (delta / (z + stats.norm.ppf(target_power))) ** 2
    if a == 0 and b == 0:
        return int(n.max())
    return int(math.ceil((a + math.sqrt(a**2 + 4 * b * target_var)) / (2 * target_var)))


def _recommend(
    n_required, table, delta, target_power, alpha, ci_level, per_judgment, tokens, price
) -> str:
    if n_required is None:
        return "The two populations have the same SAL; no budget can detect a difference."
    beyond = n_required > table["n_per_category"].max()
    judgments = int(math.ceil(n_required * per_judgment))
    text = (
        f"Label at least {n_required} rules per category (about {judgments} judgments) to "
        f"detect a SAL difference of {delta:.3f} bits with {100 * target_power:.0f}% power "
        f"(two-sided test at alpha = {alpha:g})"
        + (" (extrapolated beyond the simulated grid)" if beyond else "")
        + "."
    )
    if tokens is not None:
        total = judgments * tokens
        text += f" At {tokens:.0f} tokens per judgment that is {total / 1e6:.2f}M tokens"
        text += f", about {total / 1000 * price:.2f} USD." if price is not None else "."
    at = table.iloc[(table["n_per_category"] - n_required).abs().argmin()]
    text += (
        f" With {int(at['n_per_category'])} rules per category the {100 * ci_level:.0f}% CI of "
        f"SAL is about "
        f"{at['ci_width']:.3f} bits wide."
    )
    return text


def pool_from_rules(
    rules: pd.DataFrame,
    prob_column: str = "prob",
    category_column: str = "category",
    categories: Sequence[str] = metrics.CATEGORIES,
) -> tuple[dict[str, np.ndarray], dict[str, float]]:
    """A finished run's labelled rules as a pool, with the share of each category."""
    pool = metrics.probs_by_category_from_frame(rules, prob_column, category_column, categories)
    total = sum(len(v) for v in pool.values())
    shares = {k: len(v) / total for k, v in pool.items()} if total else {}
    return pool, shares
