"""Planted worlds: synthetic layer counts whose rules' soundness is known by construction.

A world is what a real model's feature pass produces, a layer-count vector per sample
(``a_c`` = number of monitored layers where feature c fires), plus a table of planted
relations with their true soundness category. It goes through the same code as a real model:
``sal.rules.count_rules`` counts it, the planted rules are labelled (from the label file this
module writes, e.g. by the ``replay`` judge), and ``sal.metrics`` computes SAL, its bootstrap
CI and permutation p-value. See ``sal.config.evaluate.WorldConfig`` for the generative model.
"""

from __future__ import annotations

import json
from dataclasses import asdict, replace
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pandas as pd
import scipy.sparse as sp

from sal import atomic
from sal import metrics
from sal.config.choices import SOUNDNESS_CATEGORIES
from sal.config.evaluate import WorldConfig

KINDS = SOUNDNESS_CATEGORIES
"""Planted kinds, named like the judge's categories so labels feed SAL unchanged."""

LABEL_COLUMNS = ["p1", "p2", "q", "category", "rationale"]
"""Columns of the ground-truth label file the replay judge reads (p2 = -1: one premise)."""

_RATIONALE = {
    "Strict": "planted strict relation: the conclusion fires, in fewer layers, whenever the "
    "premises fire",
    "Plausible": "planted plausible relation: the conclusion usually follows the premises",
    "No": "planted noise relation: the conclusion is semantically unrelated to the premises",
}


class World(NamedTuple):
    """A generated world."""

    layer_counts: sp.csr_matrix
    """Integer layer counts ``[n_samples, n_features]`` in 0..n_layers."""
    planted: pd.DataFrame
    """One row per planted rule: p1, p2 (-1 for one premise), q, category, strength
    (the planted pi), n_premise (number of premises), rationale."""
    config: WorldConfig
    """The configuration that generated it (mode and separation included)."""

    @property
    def planted_features(self) -> np.ndarray:
        """Sorted ids of every feature that takes part in a planted rule."""
        cols = [self.planted["p1"], self.planted["p2"], self.planted["q"]]
        ids = np.concatenate([c.to_numpy() for c in cols])
        return np.unique(ids[ids >= 0])


def effective_separation(cfg: WorldConfig) -> float:
    """Separation actually used: the config's in an aware world, 0 in an agnostic one."""
    return cfg.separation if cfg.mode == "aware" else 0.0


def _strengths(cfg: WorldConfig, kind: str, n: int, rng: np.random.Generator) -> np.ndarray:
    """pi = (1 - s) * u + s * target: u shared by all kinds, target the kind's own."""
    common = rng.uniform(*cfg.agnostic_strength, size=n)
    if kind == "Strict":
        target = np.full(n, cfg.strict_strength)
    elif kind == "Plausible":
        target = rng.uniform(*cfg.plausible_strength, size=n)
    else:
        target = np.full(n, cfg.noise_strength)
    s = effective_separation(cfg)
    return (1 - s) * common + s * target


def _plant_table(cfg: WorldConfig, rng: np.random.Generator) -> pd.DataFrame:
    """Choose premise sets and conclusions (all features distinct) and their strengths."""
    n_two = round(cfg.n_planted_per_kind * cfg.two_premise_fraction)
    arities = [1] * (cfg.n_planted_per_kind - n_two) + [2] * n_two
    n_needed = len(KINDS) * sum(a + 1 for a in arities)
    # Planted features are scattered among the ids, not a block, like real features.
    ids = iter(rng.permutation(cfg.n_features)[:n_needed])
    rows = []
    for kind in KINDS:
        strength = _strengths(cfg, kind, len(arities), rng)
        for arity, pi in zip(arities, strength):
            premises = sorted(int(next(ids)) for _ in range(arity))
            rows.append(
                {
                    "p1": premises[0],
                    "p2": premises[1] if arity == 2 else -1,
                    "q": int(next(ids)),
                    "category": kind,
                    "strength": float(pi),
                    "n_premise": arity,
                    "rationale": f"{_RATIONALE[kind]} (planted strength {pi:.2f})",
                }
            )
    return pd.DataFrame(rows)


def _zipf_background(
    cfg: WorldConfig, features: np.ndarray, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """(sample, feature) pairs of background activity with Zipf-like feature popularity."""
    if features.size == 0 or cfg.background_active == 0:
        return np.empty(0, int), np.empty(0, int)
    weight = 1.0 / np.arange(1, features.size + 1) ** cfg.zipf_exponent
    rate = np.minimum(1.0, cfg.background_active * weight / weight.sum())
    n_fire = rng.binomial(cfg.n_samples, rate)
    rows = [rng.choice(cfg.n_samples, size=k, replace=False) for k in n_fire]
    return np.concatenate(rows), np.repeat(rng.permutation(features), n_fire)


def generate_world(cfg: WorldConfig | None = None) -> World:
    """Generate a planted world (see ``WorldConfig`` for the generative model)."""
    cfg = cfg or WorldConfig()
    rng = np.random.default_rng(cfg.seed)
    planted = _plant_table(cfg, rng)
    n, L = cfg.n_samples, cfg.n_layers

    premise_ids = np.concatenate([planted["p1"], planted.loc[planted["p2"] >= 0, "p2"]])
    conclusion_ids = planted["q"].to_numpy()
    background = np.setdiff1d(
        np.arange(cfg.n_features), np.concatenate([premise_ids, conclusion_ids])
    )

    # Planted columns are built densely ([n_samples, n_planted] is small); the background
    # goes straight into COO triplets.
    counts = {}
    for q in conclusion_ids:
        rate = rng.uniform(*cfg.conclusion_base_rate)
        fires = rng.random(n) < rate
        counts[int(q)] = np.where(fires, rng.integers(1, L + 1, size=n), 0)
    for rule in planted.itertuples():
        premises = [rule.p1] + ([rule.p2] if rule.p2 >= 0 else [])
        triggered = rng.random(n) < cfg.trigger_rate
        # Premises fire in at least 2 layers so a conclusion can fire in fewer.
        for p in premises:
            counts[int(p)] = np.where(triggered, rng.integers(2, L + 1, size=n), 0)
        min_premise = np.min([counts[int(p)] for p in premises], axis=0)
        follows = triggered & (rng.random(n) < rule.strength)
        # The conclusion fires in 1..min_premise-1 layers: exactly a_p > a_q > 0.
        below = 1 + np.floor(rng.random(n) * (min_premise - 1)).astype(int)
        counts[int(rule.q)] = np.where(follows, below, counts[int(rule.q)])

    bg_rows, bg_cols = _zipf_background(cfg, background, rng)
    bg_vals = rng.integers(1, L + 1, size=bg_rows.size)
    planted_cols = np.fromiter(counts, dtype=int)
    dense_NP = np.stack([counts[c] for c in planted_cols], axis=1)
    pr, pc = np.nonzero(dense_NP)
    layer_counts = sp.csr_matrix(
        (
            np.concatenate([dense_NP[pr, pc], bg_vals]).astype(np.int16),
            (np.concatenate([pr, bg_rows]), np.concatenate([planted_cols[pc], bg_cols])),
        ),
        shape=(n, cfg.n_features),
    )
    layer_counts.sum_duplicates()
    return World(layer_counts, planted, cfg)


# --------------------------------------------------------------------------------------
# Files
# --------------------------------------------------------------------------------------


def label_table(world: World) -> pd.DataFrame:
    """Ground-truth labels in the replay judge's format: p1, p2, q, category, rationale."""
    return world.planted[LABEL_COLUMNS].copy()


def write_labels(world: World, path: str | Path) -> Path:
    """Write the ground-truth label file (CSV) and return its path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    label_table(world).to_csv(path, index=False)
    return path


def save_world(world: World, directory: str | Path) -> dict[str, Path]:
    """Write ``layer_counts.npz``, ``labels.csv``, ``planted.csv`` and ``world.json``."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    paths = {
        "layer_counts": directory / "layer_counts.npz",
        "labels": directory / "labels.csv",
        "planted": directory / "planted.csv",
        "config": directory / "world.json",
    }
    with atomic.atomic_path(paths["layer_counts"]) as tmp:
        sp.save_npz(tmp, world.layer_counts)
    write_labels(world, paths["labels"])
    world.planted.to_csv(paths["planted"], index=False)
    atomic.write_json(paths["config"], asdict(world.config))
    return paths


def load_world(directory: str | Path) -> World:
    """Read a world written by ``save_world``."""
    directory = Path(directory)
    cfg = WorldConfig(**json.loads((directory / "world.json").read_text()))
    planted = pd.read_csv(directory / "planted.csv")
    return World(sp.load_npz(directory / "layer_counts.npz").tocsr(), planted, cfg)


# --------------------------------------------------------------------------------------
# Through the production path
# --------------------------------------------------------------------------------------


def count_world_rules(
    world: World,
    scope: str | None = None,
    beta: float = 1.0,
    min_premise_count: int | None = None,
    min_rule_count: int = 1,
) -> pd.DataFrame:
    """Count the world's rules with the production engine ``sal.rules.count_rules``.

    ``scope`` (default: the world's ``count_scope``) is ``all`` or ``planted``; ``planted``
    restricts premises and conclusions to planted features, which leaves the planted rules'
    counts unchanged and is much faster. ``min_premise_count`` defaults to the world's.
    """
    from sal.rules import count_rules  # imported here: the engine pulls in heavier modules

    scope = scope or world.config.count_scope
    allowed = world.planted_features if scope == "planted" else None
    return count_rules(
        world.layer_counts,
        max_premises=2,
        beta=beta,
        min_premise_count=(
            world.config.min_premise_count if min_premise_count is None else min_premise_count
        ),
        min_rule_count=min_rule_count,
        allowed=allowed,
    )


def attach_labels(rules: pd.DataFrame, labels: pd.DataFrame) -> pd.DataFrame:
    """Counted rules that have a label: rules joined with labels on (p1, p2, q).

    Planted rules absent from ``rules`` were not emitted by the counter (e.g. a noise rule
    whose conclusion never fired below its premises when ``min_rule_count`` = 1); the
    returned frame has ``prob`` NaN for them so they can be reported.
    """
    keys = ["p1", "p2", "q"]
    cols = keys + [c for c in ("n_premise", "n_rule", "prob") if c in rules.columns]
    lab = labels.drop(columns=[c for c in ("n_premise",) if c in labels.columns])
    return lab.merge(rules[cols], on=keys, how="left")


class Recovery(NamedTuple):
    """How well the counted probabilities recover what was planted."""

    by_category: pd.DataFrame
    """Per category: n_planted, n_emitted, mean/min/max estimated probability, mean planted
    strength."""
    strict_min_prob: float
    """Lowest estimated probability among emitted strict rules."""
    strict_recovered: float
    """Fraction of planted strict rules emitted with estimated probability > 0.9."""


def recovery(labelled: pd.DataFrame) -> Recovery:
    """Summarise estimated probabilities per planted category (from ``attach_labels``)."""
    agg = labelled.groupby("category", sort=False).agg(
        n_planted=("q", "size"),
        n_emitted=("prob", "count"),
        mean_prob=("prob", "mean"),
        min_prob=("prob", "min"),
        max_prob=("prob", "max"),
        **({"mean_strength": ("strength", "mean")} if "strength" in labelled else {}),
    )
    strict = labelled[labelled["category"] == "Strict"]
    return Recovery(
        by_category=agg,
        strict_min_prob=float(strict["prob"].min()) if len(strict) else float("nan"),
        strict_recovered=float((strict["prob"] > 0.9).mean()) if len(strict) else float("nan"),
    )


class Validation(NamedTuple):
    """One world through counting, labelling and SAL."""

    sal: metrics.SALResult
    """SAL with CI and permutation p-value over the labelled planted rules."""
    recovery: Recovery
    """Estimated vs planted probabilities."""
    labelled: pd.DataFrame
    """Planted rules with their counted probability (NaN if not emitted)."""


def validate_world(
    world: World,
    rules: pd.DataFrame | None = None,
    labels: pd.DataFrame | None = None,
    bins: int = metrics.DEFAULT_BINS,
    n_bootstrap: int = 1000,
    n_permutations: int = 1000,
    ci_level: float = 0.95,
    seed: int = 0,
    drop_empty: bool = False,
) -> Validation:
    """Count (unless ``rules`` is given), label, and compute SAL for a planted world.

    Args:
        world: the planted world.
        rules: the counted rules table; None counts with ``count_world_rules``.
        labels: judge labels with p1, p2, q, category (e.g. what the replay judge returned);
            None uses the world's ground truth directly.
    """
    rules = count_world_rules(world) if rules is None else rules
    truth = world.planted
    if labels is not None:
        truth = labels[["p1", "p2", "q", "category"]].merge(
            truth.drop(columns=["category", "rationale"]), on=["p1", "p2", "q"], how="left"
        )
    labelled = attach_labels(rules, truth)
    emitted = labelled.dropna(subset=["prob"])
    probs = metrics.probs_by_category_from_frame(emitted, categories=KINDS)
    result = metrics.evaluate_sal(
        probs,
        bins=bins,
        n_bootstrap=n_bootstrap,
        n_permutations=n_permutations,
        ci_level=ci_level,
        seed=seed,
        drop_empty=drop_empty,
    )
    return Validation(result, recovery(labelled), labelled)


def separation_sweep(
    cfg: WorldConfig,
    separations=(0.0, 0.25, 0.5, 0.75, 1.0),
    n_seeds: int = 3,
    **sal_kwargs,
) -> pd.DataFrame:
    """SAL of aware worlds across planted separations; separation 0 is the agnostic world.

    Returns one row per world: mode (agnostic at separation 0), separation, seed, sal,
    ci_low, ci_high, p_value, null_mean, strict_min_prob, and the rule counts per category.
    """
    rows = []
    for s in separations:
        for k in range(n_seeds):
            world = generate_world(replace(cfg, mode="aware", separation=s, seed=cfg.seed + k))
            v = validate_world(world, seed=cfg.seed + k, **sal_kwargs)
            rows.append(
                {
                    "mode": "agnostic" if s == 0 else "aware",
                    "separation": s,
                    "seed": cfg.seed + k,
                    "sal": v.sal.sal,
                    "ci_low": v.sal.ci[0],
                    "ci_high": v.sal.ci[1],
                    "p_value": v.sal.p_value,
                    "null_mean": v.sal.null_mean,
                    "strict_min_prob": v.recovery.strict_min_prob,
                    **{f"n_{c}": n for c, n in v.sal.counts.items()},
                }
            )
    return pd.DataFrame(rows)


def rule_pool(world: World, rules: pd.DataFrame | None = None) -> dict[str, np.ndarray]:
    """Counted probabilities of the planted rules by category: a population for power.py."""
    labelled = attach_labels(count_world_rules(world) if rules is None else rules, world.planted)
    return metrics.probs_by_category_from_frame(
        labelled.dropna(subset=["prob"]), categories=KINDS
    )
