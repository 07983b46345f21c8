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


def plot_sal_vs_accuracy(comparison, path: str | Path, label: str = "SAL") -> Path:
    """Figure 4: SAL vs post-RL accuracy (left) and the fitted error law (right).

    ``comparison`` is a ``sal.analysis.Comparison``; ``label`` names its x quantity (SAL, or
    ΔSAL against the null twin).
    """
    t, fit = comparison.table, comparison.fit
    fig, (left, right) = plt.subplots(1, 2, figsize=(9, 3.6))
    left.scatter(t["sal"], t["accuracy"], color="#264653")
    for row in t.itertuples():
        left.annotate(row.model, (row.sal, row.accuracy), fontsize=7,
                      textcoords="offset points", xytext=(3, 3))
    left.set_xlabel(f"{label} (bits)")
    left.set_ylabel(f"post-RL accuracy, {comparison.accuracy_column} (%)")
    grid = np.linspace(1e-4, max(float(t["sal"].max()) * 1.3, 0.3), 200)
    right.scatter(t["sal"], t["error"], color="#264653", label="observed", zorder=3)
    if comparison.loo is not None:
        right.scatter(t["sal"], t["loo_error"], marker="x", color="#e76f51",
                      label=f"leave-one-out (R²={comparison.loo.r2:.3f})", zorder=3)
    right.plot(grid, fit.predict(grid), color="#2a9d8f",
               label=f"exp(-{fit.alpha:.3f}·s^{fit.beta:.3f}), R²={fit.r2:.3f}")
    right.set_xlabel(f"{label} s (bits)")
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


def plot_robustness(seeds: pd.DataFrame, spreads: Mapping, sensitivity: pd.DataFrame, path: str | Path) -> Path:
    """analysis=robustness: each seed's SAL and ΔSAL with its bootstrap CI and the headline
    interval (rule resampling and seed spread pooled), then one panel per sensitivity factor
    (mean over the runs at that setting, error bars one standard deviation over seeds)."""
    factors = list(dict.fromkeys(sensitivity["factor"]))
    fig, axes = plt.subplots(1, 1 + len(factors), figsize=(3.2 * (1 + len(factors)), 3.2), squeeze=False)
    ax = axes[0, 0]
    for j, (name, colour) in enumerate((("sal", "#264653"), ("delta", "#e76f51"))):
        if name not in seeds or seeds[name].isna().all():
            continue
        x = np.arange(len(seeds)) + 0.15 * (j - 0.5)
        y = seeds[name].astype(float).to_numpy()
        err = np.abs(np.vstack([y - seeds[f"{name}_ci_low" if name == "delta" else "ci_low"].astype(float),
                                seeds[f"{name}_ci_high" if name == "delta" else "ci_high"].astype(float) - y]))
        label = "SAL" if name == "sal" else "ΔSAL (vs null twin)"
        ax.errorbar(x, y, yerr=err, fmt="o", color=colour, capsize=3, label=label)
        spread = spreads.get("sal" if name == "sal" else "delta_sal")
        if spread:
            ax.axhspan(*spread["interval"], color=colour, alpha=0.12)
            ax.axhline(spread["mean"], color=colour, lw=0.8, ls="--")
    ax.axhline(0, color="grey", lw=0.6)
    ax.set_xticks(range(len(seeds)), [str(s) for s in seeds["seed"]])
    ax.set_xlabel("crosscoder seed (band: headline interval)")
    ax.set_ylabel("bits")
    ax.legend(fontsize=7)
    for ax, factor in zip(axes[0, 1:], factors):
        t = sensitivity[sensitivity["factor"] == factor]
        for name, colour, label in (("sal", "#264653", "SAL"), ("delta", "#e76f51", "ΔSAL")):
            if t[f"{name}_mean"].isna().all():
                continue
            ax.errorbar(t["value"].astype(float), t[f"{name}_mean"], yerr=t[f"{name}_sd"].fillna(0), fmt="o-",
                        color=colour, capsize=3, label=label)
        ax.axhline(0, color="grey", lw=0.6)
        values = t["value"].astype(float)
        if factor in ("bins", "n_features", "min_premise_count"):
            ax.set_xscale("log")
        ax.set_xticks(values, [f"{v:g}" for v in values])
        ax.minorticks_off()
        missing = values[t["sal_mean"].isna()]
        if len(missing):  # say where a setting left too few rules, rather than leave a gap
            ax.scatter(missing, np.zeros(len(missing)), marker="x", color="grey", label="not computable")
        ax.set_xlabel(factor)
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


def plot_network_validation(table: pd.DataFrame, path: str | Path) -> Path:
    """SAL (left) and delta-SAL over the null twin (right) per seed, for the network trained on
    sound text, on shuffled text, and the untrained null twin (SAL only); ``table`` is
    ``sal.network_validation``'s per-seed table. A SAL that could not be computed is drawn as
    the 0 bits it scores, hatched and marked "n/c"; delta-SAL is the scored SAL minus the
    twin's. Bars carry the bootstrap CI where there is one."""
    colours = {"sound": "#2a9d8f", "shuffled": "#e9c46a", "null_twin": "#888888"}
    seeds = sorted(table["seed"].unique())
    x = np.arange(len(seeds))
    by = table.set_index(["network", "seed"])
    sal = {n: by.loc[n].reindex(seeds)["sal"].astype(float).to_numpy() for n in colours}
    twin = np.nan_to_num(sal["null_twin"])  # an uncomputable SAL scores 0 bits
    panels = (("SAL (bits)", list(colours), lambda n: np.nan_to_num(sal[n]), ("sal", "sal_ci_low", "sal_ci_high")),
              ("ΔSAL vs null twin (bits)", ["sound", "shuffled"], lambda n: np.nan_to_num(sal[n]) - twin,
               ("delta_sal", "delta_ci_low", "delta_ci_high")))
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.2), gridspec_kw={"wspace": 0.35})
    for ax, (title, nets, value, (col, lo, hi)) in zip(axes, panels):
        width = 0.8 / len(nets)
        for i, net in enumerate(nets):
            part = by.loc[net].reindex(seeds)
            val = value(net)
            # the bootstrap CI belongs to the computed estimate; none where a side was not computable
            err = np.abs(np.vstack([part[col].astype(float) - part[lo].astype(float),
                                    part[hi].astype(float) - part[col].astype(float)]))
            xs = x + (i - (len(nets) - 1) / 2) * width
            bars = ax.bar(xs, val, width, yerr=np.where(np.isnan(err), 0, err), color=colours[net], label=net, capsize=2)
            for bar, x_i, v, nc in zip(bars, xs, val, np.isnan(sal[net])):
                if nc:
                    bar.set_hatch("//")
                    bar.set_edgecolor(colours[net])
                    bar.set_facecolor("white")
                    ax.annotate("n/c", (x_i, v), ha="center", va="bottom" if v >= 0 else "top", fontsize=7)
        ax.axhline(0, color="black", lw=0.6)
        ax.set_xticks(x, [f"seed {s}" for s in seeds])
        ax.set_ylabel(title)
        ax.legend(fontsize=7)
    fig.suptitle("Network validation: sound vs shuffled text (n/c: SAL not computable, scored 0 bits)", y=1.02)
    return _save(fig, path)


def plot_network_histograms(probs_by_network: Mapping[str, Mapping[str, Sequence[float]]], path: str | Path,
                            bins: int = metrics.DEFAULT_BINS, title: str | None = None) -> Path:
    """One row per network, one panel per category: the normalised histograms SAL compares."""
    nets = list(probs_by_network)
    cats = list(dict.fromkeys(c for p in probs_by_network.values() for c in p))
    fig, axes = plt.subplots(len(nets), len(cats), figsize=(2.6 * len(cats), 1.9 * len(nets)), sharex=True,
                             squeeze=False)
    edges = np.linspace(0, 1, bins + 1)
    for r, net in enumerate(nets):
        for c, cat in enumerate(cats):
            ax = axes[r][c]
            probs = np.asarray(probs_by_network[net].get(cat, []), dtype=float)
            if probs.size:
                ax.bar(edges[:-1], metrics.histogram(probs, bins), width=1 / bins, align="edge",
                       color=_COLOURS.get(cat, "#888888"), edgecolor="white")
            ax.set_title(f"{net}: {cat} (n={probs.size})", fontsize=8)
            ax.set_xlim(0, 1)
            ax.tick_params(labelsize=7)
    for ax in axes[-1]:
        ax.set_xlabel("rule probability", fontsize=8)
    if title:
        fig.suptitle(title, y=1.01)
    return _save(fig, path)
