"""Figures of the paper (2-5) plus the validation and power figures; each writes one PNG.

Every function takes plain data (dicts, DataFrames, NamedTuples from sal.metrics,
sal.analysis and sal.power), writes the figure to ``path`` and returns that path.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only: no display on clusters or CI
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from sal import metrics  # noqa: E402
from sal.atomic import atomic_path  # noqa: E402

_COLOURS = {"Strict": "#2a9d8f", "Plausible": "#e9c46a", "No": "#e76f51", "Noise": "#e76f51"}


def _save(fig, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=120, bbox_inches="tight")
    plt.close(fig)
    return path


def plot_category_histograms(
    probs_by_category: Mapping[str, Sequence[float]],
    path: str | Path,
    bins: int = metrics.DEFAULT_BINS,
    title: str | None = None,
) -> Path:
    """Figure 2: one panel per category, the normalised histogram of its rule probabilities."""
    cats = [c for c, v in probs_by_category.items() if len(v)]
    fig, axes = plt.subplots(1, max(len(cats), 1), figsize=(3.2 * max(len(cats), 1), 2.8),
                             sharey=True, squeeze=False)
    edges = np.linspace(0, 1, bins + 1)
    for ax, cat in zip(axes[0], cats):
        rho = metrics.histogram(probs_by_category[cat], bins)
        ax.bar(edges[:-1], rho, width=1 / bins, align="edge",
               color=_COLOURS.get(cat, "#888888"), edgecolor="white")
        ax.set_title(f"{cat} (n={len(probs_by_category[cat])})")
        ax.set_xlabel("rule probability")
        ax.set_xlim(0, 1)
    axes[0][0].set_ylabel("fraction of rules")
    if title:
        fig.suptitle(title, y=1.04)
    return _save(fig, path)


def plot_pairwise_jsd(
    pairwise: Mapping[str, float] | Mapping[str, Mapping[str, float]],
    path: str | Path,
    sal: float | Mapping[str, float] | None = None,
) -> Path:
    """Figure 3: bars of the pairwise JSDs (S-P, S-N, P-N), grouped by model if several.

    ``pairwise`` is one model's ``{"S-P": ..., ...}`` or ``{model: {"S-P": ..., ...}}``;
    ``sal`` (a float or ``{model: sal}``) is added as an "overall" bar.
    """
    first = next(iter(pairwise.values()))
    by_model = pairwise if isinstance(first, Mapping) else {"": pairwise}
    if sal is not None and not isinstance(sal, Mapping):
        sal = {"": sal}
    pairs = list(next(iter(by_model.values())))
    labels = pairs + (["overall (SAL)"] if sal is not None else [])
    x = np.arange(len(labels))
    width = 0.8 / len(by_model)
    fig, ax = plt.subplots(figsize=(1.4 * len(labels) + 1.5, 3))
    for i, (model, values) in enumerate(by_model.items()):
        heights = [values[p] for p in pairs] + ([sal[model]] if sal is not None else [])
        ax.bar(x + (i - (len(by_model) - 1) / 2) * width, heights, width, label=model or None)
    ax.set_xticks(x, labels)
    ax.set_ylabel("JSD (bits)")
    if len(by_model) > 1:
        ax.legend(fontsize=8)
    return _save(fig, path)


def plot_sal_vs_accuracy(comparison, path: str | Path) -> Path:
    """Figure 4: SAL vs post-RL accuracy (left) and the fitted error law (right).

    ``comparison`` is a ``sal.analysis.Comparison``.
    """
    t, fit = comparison.table, comparison.fit
    fig, (left, right) = plt.subplots(1, 2, figsize=(9, 3.6))
    left.scatter(t["sal"], t["accuracy"], color="#264653")
    for row in t.itertuples():
        left.annotate(row.model, (row.sal, row.accuracy), fontsize=7,
                      textcoords="offset points", xytext=(3, 3))
    left.set_xlabel("SAL (bits)")
    left.set_ylabel(f"post-RL accuracy, {comparison.accuracy_column} (%)")
    grid = np.linspace(1e-4, max(float(t["sal"].max()) * 1.3, 0.3), 200)
    right.scatter(t["sal"], t["error"], color="#264653", label="observed", zorder=3)
    if comparison.loo is not None:
        right.scatter(t["sal"], t["loo_error"], marker="x", color="#e76f51",
                      label=f"leave-one-out (R²={comparison.loo.r2:.3f})", zorder=3)
    right.plot(grid, fit.predict(grid), color="#2a9d8f",
               label=f"exp(-{fit.alpha:.3f}·s^{fit.beta:.3f}), R²={fit.r2:.3f}")
    right.set_xlabel("SAL s (bits)")
    right.set_ylabel("error rate ε")
    right.legend(fontsize=7)
    return _save(fig, path)


def _size_billions(name: str) -> float | None:
    m = re.search(r"(\d+(?:\.\d+)?)\s*b\b", name.lower().replace("_", "-").split("/")[-1] + " ")
    return float(m.group(1)) if m else None


def plot_sal_scale_family(
    sal_by_model: Mapping[str, float],
    path: str | Path,
    scale_family: str = "qwen2.5",
    family_size_range: tuple[float, float] = (6.0, 9.0),
) -> Path:
    """Figure 5: SAL across one family's scales (left) and across families at ~7B (right).

    Model sizes are read from names (``qwen2.5-7b`` -> 7); the left panel takes models whose
    name contains ``scale_family``, the right one models whose size is in
    ``family_size_range`` (billions).
    """
    sized = {m: _size_billions(m) for m in sal_by_model}
    scale = sorted(
        ((s, m) for m, s in sized.items() if s is not None and scale_family in m.lower()),
        key=lambda x: x[0],
    )
    family = [m for m, s in sized.items()
              if s is not None and family_size_range[0] <= s <= family_size_range[1]]
    fig, (left, right) = plt.subplots(1, 2, figsize=(9, 3.4))
    if scale:
        left.plot([s for s, _ in scale], [sal_by_model[m] for _, m in scale], "o-",
                  color="#264653")
        left.set_xscale("log")
        left.set_xticks([s for s, _ in scale], [f"{s:g}B" for s, _ in scale])
    left.set_title(f"{scale_family} across scales")
    left.set_ylabel("SAL (bits)")
    right.bar(range(len(family)), [sal_by_model[m] for m in family], color="#2a9d8f")
    right.set_xticks(range(len(family)), family, rotation=20, fontsize=8)
    right.set_title(f"families at {family_size_range[0]:g}-{family_size_range[1]:g}B")
    return _save(fig, path)


def plot_validation(sweep: pd.DataFrame, path: str | Path) -> Path:
    """SAL against planted separation (mean over seeds, with the mean bootstrap CI and the
    permutation-null mean); ``sweep`` is ``sal.synthetic.separation_sweep``'s table."""
    g = sweep.groupby("separation").agg(
        sal=("sal", "mean"), lo=("ci_low", "mean"), hi=("ci_high", "mean"),
        null=("null_mean", "mean"), p=("p_value", "median"),
    ).reset_index()
    fig, ax = plt.subplots(figsize=(5, 3.4))
    ax.fill_between(g["separation"], g["lo"], g["hi"], alpha=0.25, color="#2a9d8f",
                    label="bootstrap CI (mean)")
    ax.plot(g["separation"], g["sal"], "o-", color="#264653", label="SAL")
    ax.scatter(sweep["separation"], sweep["sal"], s=8, color="#264653", alpha=0.4)
    ax.plot(g["separation"], g["null"], "--", color="#e76f51",
            label="permutation null mean (agnostic floor)")
    ax.axhline(np.log2(3), color="grey", lw=0.8, ls=":", label="log2(3)")
    ax.set_xlabel("planted separation (0 = soundness-agnostic world)")
    ax.set_ylabel("SAL (bits)")
    ax.legend(fontsize=7)
    return _save(fig, path)


def plot_power(power, path: str | Path) -> Path:
    """CI width (left) and power (right) against labelled rules per category;
    ``power`` is a ``sal.power.PowerAnalysis``."""
    t = power.table
    fig, (left, right) = plt.subplots(1, 2, figsize=(9, 3.4))
    left.plot(t["n_per_category"], t["ci_width"], "o-", color="#264653")
    left.set_xscale("log")
    left.set_xlabel("labelled rules per category")
    left.set_ylabel("CI width of SAL (bits)")
    right.plot(t["n_per_category"], t["power"], "o-", color="#2a9d8f")
    right.axhline(power.target_power, color="grey", ls="--", lw=0.8)
    if power.n_required is not None:
        right.axvline(power.n_required, color="#e76f51", ls=":", lw=1,
                      label=f"N = {power.n_required}")
        right.legend(fontsize=8)
    right.set_xscale("log")
    right.set_ylim(0, 1.02)
    right.set_xlabel("labelled rules per category")
    right.set_ylabel(f"power, ΔSAL = {power.delta:.3f} bits")
    return _save(fig, path)
