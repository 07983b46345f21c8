"""``count_rules``: every 1- and 2-premise Horn-clause rule with its exact counts (Appendix D).

A dispatcher between two engines that give identical tables: the native kernel
(``sal.rules.native``, C, compiled at install time; several times faster, no partial tables)
and the numpy engine (``sal.rules.numpy_engine``: chunked sparse products whose partial
tables spill to disk). The counts and their definitions are in ``sal.rules.rule_counts``.
"""

from __future__ import annotations

import warnings
from typing import Any

import pandas as pd
import scipy.sparse as sp

from sal.rules import native
from sal.rules._csr import as_layer_count_csr
from sal.rules.numpy_engine import conclusion_segments, count_premises
from sal.rules.options import DEFAULT_CHUNK_SAMPLES, DEFAULT_MEMORY_BUDGET_GB, CountOptions

__all__ = ["count_rules"]

ENGINES = ("auto", "native", "numpy")


def count_rules(
    layer_counts: Any,
    max_premises: int = 2,
    beta: float = 1.0,
    min_premise_count: int = 1,
    min_rule_count: int = 1,
    allowed: Any = None,
    *,
    chunk_samples: int = DEFAULT_CHUNK_SAMPLES,
    memory_budget_gb: float = DEFAULT_MEMORY_BUDGET_GB,
    spill_dir: str | None = None,
    progress: bool = False,
    engine: str = "auto",
) -> pd.DataFrame:
    """Every 1- (and 2-) premise rule with its exact counts and smoothed probability.

    Args:
        layer_counts: integer array [n_samples, C] or ``scipy.sparse`` matrix of per-sample
            layer counts (``sal.rules.aggregate``).
        allowed: feature ids or bool mask [C]; premises and conclusions are restricted to it.
        engine: ``"auto"`` (the native kernel of ``sal.rules.native`` when it is built and
            its scratch memory fits ``memory_budget_gb``, else the numpy engine),
            ``"native"`` (always the kernel) or ``"numpy"`` (always the chunked products, which
            spill partial tables to disk). All give identical tables.
        The other arguments are the fields of ``CountOptions`` (``sal.rules.options``):
        ``max_premises`` (1 or 2), ``beta`` (Eq. 3), ``min_premise_count`` and
        ``min_rule_count`` (filters on count(P) and count(P, q)), ``chunk_samples``,
        ``memory_budget_gb``, ``spill_dir`` and ``progress``.

    Returns:
        DataFrame with columns ``p1, p2, q, n_premise, n_rule, prob`` (int32 x 5, float64),
        ``p2 = -1`` for one-premise rules, sorted by (p1, p2, q).
    """
    options = CountOptions(
        max_premises=max_premises, beta=beta, min_premise_count=min_premise_count, min_rule_count=min_rule_count,
        chunk_samples=chunk_samples, memory_budget_gb=memory_budget_gb, spill_dir=spill_dir, progress=progress,
    )
    if engine not in ENGINES:
        raise ValueError(f"engine={engine!r}: choose 'auto', 'native' or 'numpy'")
    if engine == "native" and not native.available():
        raise ImportError(f"engine='native': {native.unavailable_reason()}; or pass engine='auto' / 'numpy'")
    mat = as_layer_count_csr(layer_counts, allowed)  # validate and restrict once
    if engine == "auto" and not native.available():
        warnings.warn(f"count_rules: {native.unavailable_reason()}. Counting with the numpy engine meanwhile "
                      "(same table, several times slower).", RuntimeWarning, stacklevel=2)
    if _runs_native(engine, mat, options):
        return native.count_rules_native(mat, options)
    segments = conclusion_segments(mat, count_premises(mat, options), options)
    del mat  # the table is the stage's largest object: the input's copy need not outlive the counting
    return segments.rules_table(options)


def _runs_native(engine: str, mat: sp.csr_matrix, options: CountOptions) -> bool:
    if engine == "native":
        return True
    return engine == "auto" and native.available() and native.scratch_bytes(mat) <= options.memory_budget_bytes
