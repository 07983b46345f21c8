"""The Soundness-Aware Level (SAL, paper Eq. 4) and the statistics around it.

A model's labelled rules are grouped by soundness category (Strict, Plausible, No). Each
category's rule probabilities become a histogram ``rho_y`` over ``B`` uniform bins on [0, 1],
and SAL is the generalised Jensen-Shannon divergence of those histograms, in bits:

    SAL = (1/|Y|) * sum_y KL(rho_y || m),   m = (1/|Y|) * sum_y rho_y.

Around that number this module gives the uncertainty a reviewer asks for: a bootstrap
confidence interval (rules resampled within each category) and a permutation test against
"the model is soundness-agnostic" (category labels shuffled across the pooled rules).

Every statistic works on binned counts, so resampling is done on counts directly: resampling
``n`` rules with replacement is a multinomial draw over the bins, and shuffling labels is a
permutation of the pooled bin indices. Both are vectorised over replicates, so thousands of
replicates take well under a second.

Choice of the default number of bins (``DEFAULT_BINS = 20``; paste-able into the README):

    The paper does not state B; we use B = 20 (bins 0.05 wide) and also report SAL at
    B = 10 and B = 50. SAL is a plug-in estimate from a few hundred labelled rules per
    category, and plug-in divergences are biased upwards: with no real difference between
    the categories, the expected SAL is about (|Y| - 1)(B - 1) / (2 N ln 2) bits for N
    labelled rules in all (checked by simulation), i.e. 0.03 bits at B = 20 but 0.08 bits at
    B = 50 with 300 rules per category, the latter larger than the 0.05-bit gaps between
    models that the paper interprets. B = 10 halves the bias again, but its 0.1-wide bins
    blur the shapes that carry the signal (Strict rules piled above 0.9, Plausible ones
    spread over the middle, No rules low; Figure 2). B = 20 keeps those shapes with a bias
    below 0.01 bits at 1,000 rules per category, and every report prints the permutation
    null mean, the SAL a soundness-agnostic model would get at the same sample sizes.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence
from itertools import combinations
from typing import NamedTuple

import numpy as np
import pandas as pd

from sal.config.choices import SOUNDNESS_CATEGORIES

DEFAULT_BINS = 20
"""Default number of uniform bins on [0, 1]; see the module docstring for the rationale."""

REPORT_BINS = (10, 20, 50)
"""Bin counts at which SAL is always reported, to show the choice of B does not drive it."""

CATEGORIES = SOUNDNESS_CATEGORIES
"""The judge's soundness categories, in the paper's order."""

_ABBREVIATIONS = {"Strict": "S", "Plausible": "P", "No": "N", "Noise": "N"}


# --------------------------------------------------------------------------------------
# Divergences
# --------------------------------------------------------------------------------------


def _jsd_batch(dist_RKB: np.ndarray, base: float = 2.0) -> np.ndarray:
    """Generalised JSD of K distributions over B bins, batched over leading dims.

    Rows must already be normalised. Terms with rho = 0 contribute 0 (0 log 0 = 0); where
    rho > 0 the mixture m is > 0 too, so the log is always finite.
    """
    m_RB = dist_RKB.mean(axis=-2, keepdims=True)
    positive = dist_RKB > 0
    ratio = np.divide(dist_RKB, m_RB, out=np.ones_like(dist_RKB), where=positive)
    kl_RK = np.sum(np.where(positive, dist_RKB * np.log(ratio), 0.0), axis=-1)
    # Clip at 0: JSD is non-negative, tiny negatives are float round-off on identical rows.
    return np.maximum(kl_RK.mean(axis=-1) / math.log(base), 0.0)


def _normalise_rows(counts: np.ndarray) -> np.ndarray:
    totals = counts.sum(axis=-1, keepdims=True)
    return counts / np.where(totals > 0, totals, 1)


def jsd(distributions, base: float = 2.0):
    """Generalised Jensen-Shannon divergence: the mean KL of each row to the rows' mean.

    Args:
        distributions: array ``[K, B]`` whose rows are distributions over the same B bins
            (non-negative; each row is normalised to sum to 1, so counts are accepted too).
            Extra leading dimensions ``[..., K, B]`` are treated as a batch.
        base: logarithm base; 2 gives bits (the paper's unit; the maximum for K rows is
            log2(K), reached by K disjoint distributions).

    Returns:
        A float for a 2-D input, an array of shape ``[...]`` for a batched input.
    """
    dist = np.asarray(distributions, dtype=float)
    if dist.ndim < 2:
        raise ValueError(
            f"jsd expects rows of distributions, shape [K, B]; got shape {dist.shape}. "
            "Stack the distributions, e.g. jsd(np.stack([p, q]))."
        )
    if dist.shape[-2] < 2:
        raise ValueError(f"jsd needs at least 2 distributions, got {dist.shape[-2]}.")
    if not np.all(np.isfinite(dist)) or np.any(dist < 0):
        raise ValueError("jsd: distributions must be finite and non-negative.")
    totals = dist.sum(axis=-1)
    if np.any(totals <= 0):
        raise ValueError("jsd: every distribution needs positive mass; got an all-zero row.")
    out = _jsd_batch(dist / totals[..., None], base=base)
    return float(out) if out.ndim == 0 else out


# --------------------------------------------------------------------------------------
# Histograms
# --------------------------------------------------------------------------------------


def _check_bins(bins: int) -> int:
    if isinstance(bins, bool) or not isinstance(bins, (int, np.integer)) or bins < 2:
        raise ValueError(f"bins must be an integer >= 2, got {bins!r}.")
    return int(bins)


def bin_index(probs, bins: int) -> np.ndarray:
    """Bin of each probability among ``bins`` uniform bins on [0, 1].

    Bins are half-open ``[k/B, (k+1)/B)`` except the last, which is closed, so a
    probability of exactly 1.0 falls in the last bin (as in ``numpy.histogram``).
    """
    bins = _check_bins(bins)
    p = np.asarray(probs, dtype=float).ravel()
    if p.size and (not np.all(np.isfinite(p)) or p.min() < 0 or p.max() > 1):
        bad = p[~np.isfinite(p) | (p < 0) | (p > 1)]
        raise ValueError(
            f"rule probabilities must lie in [0, 1]; got {bad.size} outside it, e.g. "
            f"{bad[:5].tolist()}. Check the rules table's prob column."
        )
    edges = np.linspace(0.0, 1.0, bins + 1)
    return np.clip(np.searchsorted(edges, p, side="right") - 1, 0, bins - 1)


def histogram(probs, bins: int = DEFAULT_BINS, normalize: bool = True) -> np.ndarray:
    """Histogram of rule probabilities over ``bins`` uniform bins on [0, 1].

    Returns ``rho`` (sums to 1) when ``normalize`` is true, else the integer counts.
    A probability of exactly 1.0 is counted in the last bin.
    """
    idx = bin_index(probs, bins)
    counts = np.bincount(idx, minlength=bins)
    if not normalize:
        return counts
    if counts.sum() == 0:
        raise ValueError("histogram of an empty set of probabilities cannot be normalised.")
    return counts / counts.sum()


# --------------------------------------------------------------------------------------
# SAL
# --------------------------------------------------------------------------------------


def _prepare(
    probs_by_category: Mapping[str, Sequence[float]], drop_empty: bool
) -> tuple[dict[str, np.ndarray], tuple[str, ...]]:
    """Validate the category -> probabilities mapping; drop or reject empty categories."""
    if not isinstance(probs_by_category, Mapping):
        raise TypeError(
            "probs_by_category must be a dict from category name to an array of rule "
            f"probabilities, got {type(probs_by_category).__name__}. For a table of rules use "
            "probs_by_category_from_frame(df)."
        )
    arrays = {str(k): np.asarray(v, dtype=float).ravel() for k, v in probs_by_category.items()}
    empty = tuple(k for k, v in arrays.items() if v.size == 0)
    if empty and not drop_empty:
        raise ValueError(
            f"soundness category {', '.join(map(repr, empty))} has no labelled rules, so its "
            "histogram is undefined. Label more rules (raise evaluate.n_rules_per_arity) or set "
            "evaluate.empty_category=drop to compute SAL over the remaining categories."
        )
    if empty:
        warnings.warn(
            f"dropping soundness categories with no labelled rules: {', '.join(empty)}; SAL is "
            "computed over the remaining categories and is not comparable to a 3-category SAL.",
            stacklevel=3,
        )
        arrays = {k: v for k, v in arrays.items() if v.size > 0}
    if len(arrays) < 2:
        raise ValueError(
            f"SAL needs at least 2 non-empty soundness categories, got {list(arrays)} "
            f"(empty: {list(empty)}). Label more rules."
        )
    return arrays, empty


def category_counts(
    probs_by_category: Mapping[str, Sequence[float]], bins: int = DEFAULT_BINS
) -> np.ndarray:
    """Histogram counts ``[K, B]``, one row per category in the mapping's order."""
    return np.stack([histogram(v, bins, normalize=False) for v in probs_by_category.values()])


def soundness_aware_level(
    probs_by_category: Mapping[str, Sequence[float]],
    bins: int = DEFAULT_BINS,
    drop_empty: bool = False,
) -> float:
    """SAL (paper Eq. 4) in bits: the JSD of the categories' probability histograms.

    Args:
        probs_by_category: category name -> array of the rule probabilities p(Q|P) of the
            rules the judge put in that category, e.g. ``{"Strict": [...], "Plausible":
            [...], "No": [...]}``.
        bins: number of uniform bins on [0, 1] (see the module docstring for the default).
        drop_empty: a category with no rules is an error naming it; with ``drop_empty`` it is
            dropped with a warning and SAL is computed over the others.

    Returns:
        SAL in bits, between 0 and log2(number of categories).
    """
    arrays, _ = _prepare(probs_by_category, drop_empty)
    return float(_jsd_batch(_normalise_rows(category_counts(arrays, _check_bins(bins)))))


def sal_at_bins(
    probs_by_category: Mapping[str, Sequence[float]],
    bins_list: Sequence[int] = REPORT_BINS,
    drop_empty: bool = False,
) -> dict[int, float]:
    """SAL at several bin counts, e.g. ``{10: ..., 20: ..., 50: ...}``."""
    return {int(b): soundness_aware_level(probs_by_category, b, drop_empty) for b in bins_list}


def pair_name(a: str, b: str) -> str:
    """Figure 3's name for a pair of categories, e.g. ``S-P``; full names otherwise."""
    return f"{_ABBREVIATIONS.get(a, a)}-{_ABBREVIATIONS.get(b, b)}"


def pairwise_jsd(
    probs_by_category: Mapping[str, Sequence[float]],
    bins: int = DEFAULT_BINS,
    drop_empty: bool = False,
) -> dict[str, float]:
    """Two-distribution JSD (bits) of every pair of categories: S-P, S-N, P-N (Figure 3)."""
    arrays, _ = _prepare(probs_by_category, drop_empty)
    rho = _normalise_rows(category_counts(arrays, _check_bins(bins)))
    names = list(arrays)
    return {
        pair_name(names[i], names[j]): float(_jsd_batch(rho[[i, j]]))
        for i, j in combinations(range(len(names)), 2)
    }


# --------------------------------------------------------------------------------------
# Uncertainty
# --------------------------------------------------------------------------------------


def _rng(seed) -> np.random.Generator:
    return seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)


def bootstrap_sal(counts_KB: np.ndarray, n_bootstrap: int, seed=0) -> np.ndarray:
    """SAL of ``n_bootstrap`` resamples of binned counts ``[K, B]``.

    Resampling a category's n rules with replacement only matters through the bins they fall
    in, so it is exactly a multinomial draw of n over that category's empirical histogram.
    """
    counts_KB = np.asarray(counts_KB)
    n_K = counts_KB.sum(axis=-1)
    boot_RKB = _rng(seed).multinomial(
        n_K, counts_KB / n_K[:, None], size=(n_bootstrap, len(n_K))
    )
    return _jsd_batch(_normalise_rows(boot_RKB.astype(float)))


def bootstrap_ci(
    probs_by_category: Mapping[str, Sequence[float]],
    bins: int = DEFAULT_BINS,
    n_bootstrap: int = 1000,
    ci_level: float = 0.95,
    seed=0,
    drop_empty: bool = False,
) -> tuple[float, float]:
    """Percentile bootstrap CI of SAL, resampling rules within each category.

    Note that plug-in SAL is biased upwards at small sample sizes, and the percentile interval
    inherits that bias; compare with ``permutation_test(...).null_mean`` to see how large it is.
    """
    if not 0 < ci_level < 1:
        raise ValueError(f"ci_level must be in (0, 1), got {ci_level}.")
    arrays, _ = _prepare(probs_by_category, drop_empty)
    sims = bootstrap_sal(category_counts(arrays, _check_bins(bins)), n_bootstrap, seed)
    tail = (1 - ci_level) / 2
    lo, hi = np.quantile(sims, [tail, 1 - tail])
    return float(lo), float(hi)


class PermutationResult(NamedTuple):
    """Outcome of the permutation test against a soundness-agnostic model."""

    sal: float
    """Observed SAL (bits)."""
    p_value: float
    """(1 + #{permuted SAL >= observed}) / (1 + n_permutations)."""
    null_mean: float
    """Mean SAL with labels shuffled: what a soundness-agnostic model scores at these sample
    sizes, i.e. the plug-in estimator's finite-sample bias."""
    null_quantile_95: float
    """95th percentile of the permutation null."""


def permutation_sal(counts_KB: np.ndarray, n_permutations: int, seed=0, chunk: int = 256):
    """SAL of ``n_permutations`` relabellings of the pooled rules, keeping category sizes."""
    counts_KB = np.asarray(counts_KB)
    K, B = counts_KB.shape
    n_K = counts_KB.sum(axis=-1)
    # Pooled bin index of every rule; category k owns a fixed slice of positions, so
    # permuting the bin indices is the same as permuting the labels.
    pooled_bins = np.repeat(np.tile(np.arange(B), K), counts_KB.ravel())
    label_of_position = np.repeat(np.arange(K), n_K)
    rng = _rng(seed)
    out = np.empty(n_permutations)
    for start in range(0, n_permutations, chunk):
        r = min(chunk, n_permutations - start)
        perm_RN = rng.permuted(np.broadcast_to(pooled_bins, (r, pooled_bins.size)), axis=1)
        flat = (np.arange(r)[:, None] * K + label_of_position[None, :]) * B + perm_RN
        counts_RKB = np.bincount(flat.ravel(), minlength=r * K * B).reshape(r, K, B)
        out[start : start + r] = _jsd_batch(_normalise_rows(counts_RKB.astype(float)))
    return out


def permutation_test(
    probs_by_category: Mapping[str, Sequence[float]],
    bins: int = DEFAULT_BINS,
    n_permutations: int = 1000,
    seed=0,
    drop_empty: bool = False,
) -> PermutationResult:
    """Permutation test of "the model is soundness-agnostic" (all categories alike).

    Category labels are shuffled across the pooled rules, keeping each category's size; the
    p-value counts permutations whose SAL reaches the observed one, with the +1 correction so
    it is never 0 (its smallest value is 1 / (n_permutations + 1)).
    """
    arrays, _ = _prepare(probs_by_category, drop_empty)
    counts = category_counts(arrays, _check_bins(bins))
    observed = float(_jsd_batch(_normalise_rows(counts.astype(float))))
    null = permutation_sal(counts, n_permutations, seed)
    # A relative tolerance so permutations that reproduce the observed histograms exactly
    # count as "as extreme" despite float round-off.
    hits = int(np.sum(null >= observed - 1e-12 * max(1.0, observed)))
    return PermutationResult(
        sal=observed,
        p_value=(hits + 1) / (n_permutations + 1),
        null_mean=float(null.mean()),
        null_quantile_95=float(np.quantile(null, 0.95)),
    )


class DeltaSALResult(NamedTuple):
    """SAL(model) - SAL(null twin): what the model adds over what its text alone gives."""

    delta: float
    """SAL(model) - SAL(null) in bits, each at ``bins`` over its own non-empty categories."""
    ci: tuple[float, float]
    """Percentile bootstrap CI: each side's rules resampled within their categories, independently
    (the two runs label different rules)."""
    p_value: float
    """One-sided permutation p-value of "the model's rules are no better separated than the null
    twin's": within each category the pooled rules of both runs are reassigned to the two runs,
    keeping every run's category sizes; (1 + #{permuted delta >= observed}) / (1 + n)."""
    sal_model: float
    sal_null: float
    n_bootstrap: int
    n_permutations: int

    def to_dict(self) -> dict:
        d = self._asdict()
        d["ci"] = list(self.ci)
        return d


def _sal_of_counts(counts_RKB: np.ndarray) -> np.ndarray:
    """SAL of each replicate's [K, B] counts over the categories that have rules (the same
    categories in every replicate: sizes are fixed)."""
    kept = counts_RKB.reshape(-1, *counts_RKB.shape[-2:])[0].sum(axis=-1) > 0
    return _jsd_batch(_normalise_rows(counts_RKB[..., kept, :].astype(float)))


def delta_sal(
    model_probs: Mapping[str, Sequence[float]],
    null_probs: Mapping[str, Sequence[float]],
    bins: int = DEFAULT_BINS,
    n_bootstrap: int = 1000,
    n_permutations: int = 1000,
    ci_level: float = 0.95,
    seed=0,
) -> DeltaSALResult:
    """ΔSAL of a model against its null twin (same architecture, random weights, same text),
    with a bootstrap CI and a one-sided permutation test. Empty categories are left out of
    each side's SAL (as ``drop_empty``); each side needs two non-empty categories."""
    if not 0 < ci_level < 1:
        raise ValueError(f"ci_level must be in (0, 1), got {ci_level}.")
    bins = _check_bins(bins)
    with warnings.catch_warnings():  # leaving empty categories out is this function's stated rule
        warnings.simplefilter("ignore", UserWarning)
        model, _ = _prepare(model_probs, drop_empty=True)
        null, _ = _prepare(null_probs, drop_empty=True)
    names = list(dict.fromkeys([*model, *null]))
    empty = np.array([], dtype=float)
    m_KB = category_counts({k: model.get(k, empty) for k in names}, bins)
    n_KB = category_counts({k: null.get(k, empty) for k in names}, bins)
    sal_model, sal_null = float(_sal_of_counts(m_KB)), float(_sal_of_counts(n_KB))
    observed = sal_model - sal_null
    rng = _rng(seed)
    m_kept, n_kept = m_KB[m_KB.sum(axis=1) > 0], n_KB[n_KB.sum(axis=1) > 0]
    boot = bootstrap_sal(m_kept, n_bootstrap, rng) - bootstrap_sal(n_kept, n_bootstrap, rng)
    tail = (1 - ci_level) / 2
    lo, hi = np.quantile(boot, [tail, 1 - tail])
    # Permutation: per category, the pooled rules' bins are shuffled and split at the model's size.
    perm_m = np.zeros((n_permutations, len(names), bins), dtype=np.int64)
    perm_n = np.zeros_like(perm_m)
    for k in range(len(names)):
        pooled = np.repeat(np.tile(np.arange(bins), 2), np.concatenate([m_KB[k], n_KB[k]]))
        if pooled.size == 0:
            continue
        shuffled = rng.permuted(np.broadcast_to(pooled, (n_permutations, pooled.size)), axis=1)
        cut = int(m_KB[k].sum())
        rows = np.arange(n_permutations)[:, None]
        np.add.at(perm_m[:, k], (np.broadcast_to(rows, (n_permutations, cut)), shuffled[:, :cut]), 1)
        np.add.at(perm_n[:, k], (np.broadcast_to(rows, (n_permutations, pooled.size - cut)), shuffled[:, cut:]), 1)
    null_deltas = _sal_of_counts(perm_m) - _sal_of_counts(perm_n)
    hits = int(np.sum(null_deltas >= observed - 1e-12 * max(1.0, abs(observed))))
    return DeltaSALResult(delta=observed, ci=(float(lo), float(hi)), p_value=(hits + 1) / (n_permutations + 1),
                          sal_model=sal_model, sal_null=sal_null, n_bootstrap=n_bootstrap,
                          n_permutations=n_permutations)


# --------------------------------------------------------------------------------------
# One-call summary
# --------------------------------------------------------------------------------------


class SALResult(NamedTuple):
    """Everything ``sal.json`` reports about one model's SAL."""

    sal: float
    """SAL in bits at ``bins``."""
    pairwise: dict[str, float]
    """Two-category JSDs (bits): S-P, S-N, P-N."""
    ci: tuple[float, float]
    """Percentile bootstrap CI of SAL at ``ci_level``."""
    p_value: float
    """Permutation p-value against a soundness-agnostic model."""
    counts: dict[str, int]
    """Number of labelled rules per category (after dropping empty ones)."""
    bins: int
    """Number of uniform bins on [0, 1]."""
    ci_level: float
    """Coverage of ``ci``."""
    null_mean: float
    """Mean permutation-null SAL: the score of an agnostic model at these sample sizes."""
    sal_by_bins: dict[int, float]
    """SAL at the report bin counts (10, 20, 50 by default)."""
    histograms: dict[str, list[float]]
    """Normalised histogram ``rho_y`` of each category at ``bins``."""
    dropped: tuple[str, ...]
    """Categories dropped because they had no rules (only with drop_empty)."""
    n_bootstrap: int
    """Bootstrap replicates behind ``ci``."""
    n_permutations: int
    """Permutations behind ``p_value``."""

    def to_dict(self) -> dict:
        """JSON-ready dict (tuples to lists, int keys to str)."""
        d = self._asdict()
        d["ci"] = list(self.ci)
        d["dropped"] = list(self.dropped)
        d["sal_by_bins"] = {str(k): v for k, v in self.sal_by_bins.items()}
        return d


def evaluate_sal(
    probs_by_category: Mapping[str, Sequence[float]],
    bins: int = DEFAULT_BINS,
    report_bins: Sequence[int] = REPORT_BINS,
    n_bootstrap: int = 1000,
    n_permutations: int = 1000,
    ci_level: float = 0.95,
    seed: int = 0,
    drop_empty: bool = False,
) -> SALResult:
    """SAL with its pairwise JSDs, bootstrap CI, permutation p-value and counts."""
    arrays, dropped = _prepare(probs_by_category, drop_empty)
    bins = _check_bins(bins)
    rng = np.random.default_rng(seed)
    counts = category_counts(arrays, bins)
    rho = _normalise_rows(counts.astype(float))
    perm = permutation_test(arrays, bins, n_permutations, rng)
    return SALResult(
        sal=float(_jsd_batch(rho)),
        pairwise=pairwise_jsd(arrays, bins),
        ci=bootstrap_ci(arrays, bins, n_bootstrap, ci_level, rng),
        p_value=perm.p_value,
        counts={k: int(v.size) for k, v in arrays.items()},
        bins=bins,
        ci_level=ci_level,
        null_mean=perm.null_mean,
        sal_by_bins=sal_at_bins(arrays, report_bins),
        histograms={k: rho[i].tolist() for i, k in enumerate(arrays)},
        dropped=dropped,
        n_bootstrap=n_bootstrap,
        n_permutations=n_permutations,
    )


def probs_by_category_from_frame(
    rules: pd.DataFrame,
    prob_column: str = "prob",
    category_column: str = "category",
    categories: Sequence[str] = CATEGORIES,
) -> dict[str, np.ndarray]:
    """Turn a labelled rules table into the ``{category: probs}`` mapping SAL takes.

    Every category in ``categories`` gets an entry (possibly empty, so an unlabelled category
    is reported rather than silently missing); labels outside ``categories`` are an error.
    """
    missing = {prob_column, category_column} - set(rules.columns)
    if missing:
        raise ValueError(
            f"rules table lacks column(s) {sorted(missing)}; it has {list(rules.columns)}."
        )
    unknown = sorted(set(rules[category_column].astype(str)) - set(categories))
    if unknown:
        raise ValueError(
            f"unknown soundness categories {unknown} in column {category_column!r}; expected "
            f"{list(categories)}. Drop unparseable judgments before computing SAL."
        )
    cats = rules[category_column].astype(str).to_numpy()
    probs = rules[prob_column].to_numpy(dtype=float)
    return {c: probs[cats == c] for c in categories}
