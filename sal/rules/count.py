"""Exact 1- and 2-premise Horn-clause counts with the semantics of Appendix D, Algorithm 2.

Definitions (``a`` is one sample's layer-count vector, see ``sal.rules.aggregate``):

* one premise p, conclusion q != p: ``count(P) = #{n: a_p > 0}``,
  ``count(P, q) = #{n: a_p > a_q > 0}``;
* two premises p1 < p2, conclusion q not in {p1, p2}: ``count(P) = #{n: a_p1 > 0, a_p2 > 0}``,
  ``count(P, q) = #{n: a_p1 > a_q > 0 and a_p2 > a_q}``;
* ``prob = (count(P, q) + beta) / (count(P) + 2 beta)`` (Eq. 3).

Three layers, so that shards can be counted apart and merged exactly:

1. ``count_premises`` -> ``PremiseCounts``: count(P) of every feature and co-occurring pair.
   Sums over disjoint sample sets with ``PremiseCounts.merge``.
2. ``count_conclusions`` -> ``RuleCounts``: count(P, q) >= 1 for every premise set whose
   *global* count(P) passes ``min_premise_count`` (Apriori: the pruned premises are exactly
   the ones the final filter would drop). Sums with ``RuleCounts.merge``.
3. ``rules_table``: smoothing and filters -> DataFrame sorted by (p1, p2, q), p2 = -1 first.

``count_rules`` chains them in one process without materialising ``RuleCounts``. The inner
products are in ``sal.rules.engine``; chunk partial sums go through ``KeyCountAccumulator``.
When the native kernel is built (``sal.rules.native``, C, compiled at install time),
``count_rules`` instead runs it (same table, several times faster, no partial tables), unless
its scratch memory exceeds the budget; the
layers above remain the pure-numpy fallback and the engine of sharded counting.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import scipy.sparse as sp
from tqdm.auto import tqdm

from sal.faults import kill_point
from sal.rules import native
from sal.rules._csr import as_layer_count_csr, row_ids
from sal.rules.accumulate import KeyCountAccumulator, KeySegment, Segment, merge_runs
from sal.rules.engine import conclusion_rows, frequent_pair_occurrences, premise_matrix, product_segments
from sal.rules.table import RULE_COLUMNS, build_rules_table, check_filters, empty_column, run_lengths

__all__ = [
    "RULE_COLUMNS",
    "PremiseCounts",
    "RuleCounts",
    "count_premises",
    "count_conclusions",
    "rules_table",
    "count_rules",
]

DEFAULT_CHUNK_SAMPLES = 4096
DEFAULT_MEMORY_BUDGET_GB = 4.0
# Transient bytes per unit of product work in one premise block (scipy's output, its
# transposition and the int32 copies); caps the block so transients stay ~1/4 of the budget.
_BYTES_PER_WORK = 64
# Larger blocks do not run faster: the kernel's per-block overhead is already amortised and
# bigger outputs fall out of cache.
_MAX_WORK_PER_BLOCK = 1 << 24


@dataclass(frozen=True)
class PremiseCounts:
    """Exact ``count(P)`` for every single feature and every co-occurring feature pair."""

    n_samples: int
    """Number of samples counted."""
    feature_counts: np.ndarray
    """int64 [C]: samples with a_c > 0 (one-premise count(P))."""
    pair_p1: np.ndarray
    """int32 [P]: first premise of each co-occurring pair (p1 < p2); rows sorted by (p1, p2)."""
    pair_p2: np.ndarray
    """int32 [P]: second premise."""
    pair_counts: np.ndarray
    """int32 [P]: samples with a_p1 > 0 and a_p2 > 0 (two-premise count(P)), all >= 1."""

    @property
    def n_features(self) -> int:
        return len(self.feature_counts)

    def pair_keys(self) -> np.ndarray:
        """int64 p1 * C + p2, ascending."""
        return self.pair_p1.astype(np.int64) * self.n_features + self.pair_p2

    @staticmethod
    def merge(parts: list[PremiseCounts]) -> PremiseCounts:
        """Exact sum of premise counts from disjoint sample sets (e.g. shards)."""
        if not parts:
            raise ValueError("PremiseCounts.merge: got no parts; pass at least one shard's counts")
        c = parts[0].n_features
        if any(p.n_features != c for p in parts):
            raise ValueError("PremiseCounts.merge: parts were counted over different numbers of features")
        keys, counts = merge_runs([(p.pair_keys(), p.pair_counts) for p in parts])
        return PremiseCounts(
            n_samples=sum(p.n_samples for p in parts),
            feature_counts=np.sum([p.feature_counts for p in parts], axis=0, dtype=np.int64),
            pair_p1=(keys // c).astype(np.int32),
            pair_p2=(keys % c).astype(np.int32),
            pair_counts=counts.astype(np.int32, copy=False),
        )

    def n_premise_of_pairs(self, p1: np.ndarray, p2: np.ndarray) -> np.ndarray:
        """count(P) of (p1, p2) pairs sorted by (p1, p2) (looked up once per distinct pair)."""
        if len(p1) == 0:
            return np.zeros(0, np.int32)
        starts = np.flatnonzero(np.r_[True, (p1[1:] != p1[:-1]) | (p2[1:] != p2[:-1])])
        group_keys = p1[starts].astype(np.int64) * self.n_features + p2[starts]
        keys = self.pair_keys()
        idx = np.minimum(np.searchsorted(keys, group_keys), max(len(keys) - 1, 0))
        if len(keys) == 0 or np.any(keys[idx] != group_keys):
            raise ValueError(
                "rules: a two-premise rule's premise pair never co-occurs in these PremiseCounts; "
                "pass the premise counts of the same (merged) rule set"
            )
        return np.repeat(self.pair_counts[idx], np.diff(np.r_[starts, len(p1)]))


@dataclass(frozen=True)
class RuleCounts:
    """Exact ``count(P, q) >= 1`` of every rule whose premise passed the Apriori filter."""

    n_features: int
    """C, the number of feature columns."""
    min_premise_count: int
    """Premise sets with global count(P) below this were not enumerated (Apriori)."""
    one_p: np.ndarray
    """int32 [R1]: premise of each one-premise rule; rows sorted by (p, q)."""
    one_q: np.ndarray
    """int32 [R1]: conclusion."""
    one_n: np.ndarray
    """int32 [R1]: count(P, q)."""
    two_p1: np.ndarray
    """int32 [R2]: first premise of each two-premise rule; rows sorted by (p1, p2, q)."""
    two_p2: np.ndarray
    """int32 [R2]: second premise (p1 < p2)."""
    two_q: np.ndarray
    """int32 [R2]: conclusion."""
    two_n: np.ndarray
    """int32 [R2]: count(P, q)."""

    @staticmethod
    def merge(
        parts: Iterable[RuleCounts],
        memory_budget_gb: float = DEFAULT_MEMORY_BUDGET_GB,
        spill_dir: str | None = None,
    ) -> RuleCounts:
        """Exact sum of rule counts from disjoint sample sets.

        ``parts`` may be a generator (e.g. loading one shard file at a time); partial sums
        spill to disk once they outgrow ``memory_budget_gb``.
        """
        budget = int(memory_budget_gb * 2**30)
        acc1 = acc2 = None
        c = mpc = None
        for p in parts:
            if acc1 is None:
                c, mpc = p.n_features, p.min_premise_count
                acc1 = KeyCountAccumulator(c, budget, spill_dir)
                acc2 = KeyCountAccumulator(c, budget, spill_dir)  # rows are pair keys p1 * C + p2
            elif p.n_features != c or p.min_premise_count != mpc:
                raise ValueError(
                    "RuleCounts.merge: parts disagree on n_features or min_premise_count; count every "
                    "shard with the same settings and the same merged PremiseCounts"
                )
            acc1.add_run([KeySegment(p.one_p.astype(np.int64) * c + p.one_q, p.one_n, c)])
            pair = p.two_p1.astype(np.int64) * c + p.two_p2
            acc2.add_run([KeySegment(pair * c + p.two_q, p.two_n, c)])
            del p, pair
        if acc1 is None:
            raise ValueError("RuleCounts.merge: got no parts; pass at least one shard's counts")
        return _rule_counts_from_segments(c, mpc, acc1.result_segments(), acc2.result_segments(), pair_rows=None)


def _rule_counts_from_segments(
    c: int, mpc: int, one: list[Segment], two: list[Segment], pair_rows: tuple[np.ndarray, np.ndarray] | None
) -> RuleCounts:
    """Columns of a RuleCounts, releasing each segment once copied.

    Two-premise segment rows are frequent-pair indices into ``pair_rows = (p1, p2)`` or, when
    None, pair keys p1 * C + p2.
    """

    def columns(segments: list[Segment], two_premises: bool):
        n = sum(len(s) for s in segments)
        out = [empty_column(n, np.int32) for _ in range(4 if two_premises else 3)]
        at = 0
        while segments:
            seg = segments.pop(0)
            for rows, lengths, q, cnt in seg.row_runs():
                b = at + len(q)
                if two_premises:
                    if pair_rows is None:
                        first, second = rows // c, rows % c
                    else:
                        first, second = pair_rows[0][rows], pair_rows[1][rows]
                    out[0][at:b] = np.repeat(first, lengths)
                    out[1][at:b] = np.repeat(second, lengths)
                else:
                    out[0][at:b] = np.repeat(rows, lengths)
                out[-2][at:b], out[-1][at:b] = q, cnt
                at = b
        return out

    one_p, one_q, one_n = columns(one, False)
    two_p1, two_p2, two_q, two_n = columns(two, True)
    return RuleCounts(c, mpc, one_p, one_q, one_n, two_p1, two_p2, two_q, two_n)


class _SegmentSource:
    """Two-premise rules straight from the counting segments (rows = frequent-pair index).

    Every premise here passed min_premise_count already (Apriori), so only min_rule_count
    filters; without it, per-p1 totals come from row lengths alone.
    """

    def __init__(self, segments, pair_p1, pair_p2, pair_n, min_rule_count: int):
        self.segments, self.min_rule_count = segments, min_rule_count
        self.pair_p1, self.pair_p2, self.pair_n = pair_p1, pair_p2, pair_n

    def _runs(self, segments):
        for seg in segments:
            yield from seg.row_runs()

    def kept_per_p1(self, n_features: int) -> np.ndarray:
        out = np.zeros(n_features, np.int64)
        for rows, lengths, _q, n_rule in self._runs(self.segments):
            if self.min_rule_count > 1:
                p1 = np.repeat(self.pair_p1[rows], lengths)[n_rule >= self.min_rule_count]
                out += np.bincount(p1, minlength=n_features)
            else:
                out += np.bincount(self.pair_p1[rows], weights=lengths, minlength=n_features).astype(np.int64)
        return out

    def slices(self):
        while self.segments:
            seg = self.segments.pop(0)  # drop the last reference: memory returns as we fill
            for rows, lengths, q, n_rule in seg.row_runs():
                p2 = np.repeat(self.pair_p2[rows], lengths)
                n_premise = np.repeat(self.pair_n[rows], lengths)
                if self.min_rule_count > 1:
                    kept = n_rule >= self.min_rule_count
                    p1 = np.repeat(self.pair_p1[rows], lengths)[kept]
                    p2, q, n_rule, n_premise = p2[kept], q[kept], n_rule[kept], n_premise[kept]
                    run_p1, run_len = run_lengths(p1)
                else:
                    run_p1, run_len = _merge_runs_of(self.pair_p1[rows], lengths)
                yield run_p1, run_len, p2, q, n_rule, n_premise
            del seg


def _merge_runs_of(values: np.ndarray, lengths: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Run-length encoding of ``np.repeat(values, lengths)`` for sorted ``values``, without expanding."""
    if len(values) == 0:
        return values[:0], lengths[:0]
    starts = np.flatnonzero(np.r_[True, values[1:] != values[:-1]])
    return values[starts], np.add.reduceat(lengths, starts)


class _ArraySource:
    """Two-premise rules from a RuleCounts (e.g. merged shards), filtered on the fly."""

    def __init__(self, rules, premises, min_premise_count: int, min_rule_count: int, step: int = 1 << 18):
        self.rules, self.premises, self.step = rules, premises, step
        self.min_premise_count, self.min_rule_count = min_premise_count, min_rule_count

    def _kept(self):
        r = self.rules
        for a in range(0, len(r.two_n), self.step):
            s = slice(a, a + self.step)
            p1, p2, q, n_rule = r.two_p1[s], r.two_p2[s], r.two_q[s], r.two_n[s]
            n_premise = self.premises.n_premise_of_pairs(p1, p2)
            kept = (n_rule >= self.min_rule_count) & (n_premise >= self.min_premise_count)
            if not kept.all():
                p1, p2, q, n_rule, n_premise = p1[kept], p2[kept], q[kept], n_rule[kept], n_premise[kept]
            yield p1, p2, q, n_rule, n_premise

    def kept_per_p1(self, n_features: int) -> np.ndarray:
        out = np.zeros(n_features, np.int64)
        for p1, *_ in self._kept():
            out += np.bincount(p1, minlength=n_features)
        return out

    def slices(self):
        for p1, p2, q, n_rule, n_premise in self._kept():
            run_p1, run_len = run_lengths(p1)
            yield run_p1, run_len, p2, q, n_rule, n_premise


def _chunks(n_samples: int, chunk_samples: int) -> list[tuple[int, int]]:
    return [(s, min(s + chunk_samples, n_samples)) for s in range(0, n_samples, chunk_samples)]


def _check_engine(max_premises: int, chunk_samples: int, memory_budget_gb: float) -> None:
    if max_premises not in (1, 2):
        raise ValueError(f"max_premises={max_premises!r}: only 1 or 2 premises are supported (Appendix D)")
    if chunk_samples < 1:
        raise ValueError(f"chunk_samples={chunk_samples!r}: must be >= 1")
    if not memory_budget_gb > 0:
        raise ValueError(f"memory_budget_gb={memory_budget_gb!r}: must be > 0")


def count_premises(
    layer_counts: Any,
    *,
    max_premises: int = 2,
    allowed: Any = None,
    chunk_samples: int = DEFAULT_CHUNK_SAMPLES,
    memory_budget_gb: float = DEFAULT_MEMORY_BUDGET_GB,
    spill_dir: str | None = None,
    progress: bool = False,
) -> PremiseCounts:
    """Exact ``count(P)`` for every feature and, when ``max_premises == 2``, every feature pair."""
    _check_engine(max_premises, chunk_samples, memory_budget_gb)
    mat = as_layer_count_csr(layer_counts, allowed)
    n_samples, c = mat.shape
    acc = KeyCountAccumulator(c, int(memory_budget_gb * 2**30), spill_dir)
    if max_premises == 2:
        chunks = _chunks(n_samples, chunk_samples)
        for a, b in tqdm(chunks, desc="premise pairs: sample chunks", disable=not progress or len(chunks) < 2):
            chunk = mat[a:b]
            ones = sp.csr_matrix((np.ones(chunk.nnz, np.int32), chunk.indices, chunk.indptr), shape=chunk.shape)
            co = (ones.T.tocsr() @ ones).T.tocsr()  # [C, C] co-occurrences; transposition sorts
            rows = row_ids(co.indptr)
            upper = co.indices > rows  # p1 < p2 (drops the diagonal)
            rows = rows[upper]
            rows *= c
            rows += co.indices[upper]
            acc.add_run([KeySegment(rows, co.data[upper].astype(np.int32), c)])
            kill_point("count.chunk", "premises")
    keys, counts = acc.result()
    return PremiseCounts(
        n_samples=n_samples,
        feature_counts=np.bincount(mat.indices, minlength=c).astype(np.int64),
        pair_p1=(keys // c).astype(np.int32),
        pair_p2=(keys % c).astype(np.int32),
        pair_counts=counts.astype(np.int32, copy=False),
    )


def _conclusion_segments(
    mat: sp.csr_matrix,
    premises: PremiseCounts,
    max_premises: int,
    min_premise_count: int,
    chunk_samples: int,
    memory_budget_gb: float,
    spill_dir: str | None,
    progress: bool,
) -> tuple[list[Segment], list[Segment], np.ndarray]:
    """Summed rule-count segments: one-premise rows = p, two-premise rows = frequent-pair index.

    Returns (one-premise segments, two-premise segments, boolean mask of frequent pairs over
    ``premises``' pair table).
    """
    n_samples, c = mat.shape
    if premises.n_features != c:
        raise ValueError(
            f"premises: counted over {premises.n_features} features but layer_counts has {c}; "
            "count premises on the same (allowed-restricted) feature space"
        )
    if min_premise_count < 1:
        raise ValueError(f"min_premise_count={min_premise_count!r}: must be >= 1 (count(P) = 0 premises have no rules)")
    budget = int(memory_budget_gb * 2**30)
    work_per_block = int(min(_MAX_WORK_PER_BLOCK, max(1, budget // _BYTES_PER_WORK)))
    frequent_single = premises.feature_counts >= min_premise_count
    frequent_pair = premises.pair_counts >= min_premise_count
    frequent_keys = premises.pair_keys()[frequent_pair]  # ascending
    acc1 = KeyCountAccumulator(c, budget // 2, spill_dir)
    acc2 = KeyCountAccumulator(c, budget // 2, spill_dir)  # rows: frequent-pair index
    chunks = _chunks(n_samples, chunk_samples)
    for a, b in tqdm(chunks, desc="rule counts: sample chunks", disable=not progress or len(chunks) < 2):
        chunk = mat[a:b]
        if chunk.nnz == 0:
            continue
        concl = conclusion_rows(chunk)
        n_e_rows = len(concl.e_len)
        # Premise entries: frequent as a single feature (a pair is never more frequent than its
        # members) and above the sample's minimum (else nothing lies below it).
        sel = np.flatnonzero(frequent_single[chunk.indices] & (concl.rank_of_entry >= 1))
        kt1 = premise_matrix(c, chunk.indices[sel], concl.e_row_of_entry[sel], n_e_rows)
        acc1.add_run(list(product_segments(kt1, concl, work_per_block, "one-premise rules" if progress else None)))
        del kt1
        if max_premises == 2 and len(frequent_keys):
            pid, e_rows = frequent_pair_occurrences(chunk, concl, sel, frequent_keys)
            kt2 = premise_matrix(len(frequent_keys), pid, e_rows, n_e_rows)
            del pid, e_rows
            acc2.add_run(list(product_segments(kt2, concl, work_per_block, "two-premise rules" if progress else None)))
            del kt2
        kill_point("count.chunk", "conclusions")
    return acc1.result_segments(), acc2.result_segments(), frequent_pair


def count_conclusions(
    layer_counts: Any,
    premises: PremiseCounts,
    *,
    max_premises: int = 2,
    min_premise_count: int = 1,
    allowed: Any = None,
    chunk_samples: int = DEFAULT_CHUNK_SAMPLES,
    memory_budget_gb: float = DEFAULT_MEMORY_BUDGET_GB,
    spill_dir: str | None = None,
    progress: bool = False,
) -> RuleCounts:
    """Exact ``count(P, q) >= 1`` on ``layer_counts`` for premises passing ``min_premise_count``.

    ``premises`` must be the counts over the *whole* rule set (for a shard: the merged counts of
    all shards), so Apriori pruning keeps exactly the premises the final filter keeps; then
    ``RuleCounts.merge`` of the shards equals the single-process counts.
    """
    _check_engine(max_premises, chunk_samples, memory_budget_gb)
    mat = as_layer_count_csr(layer_counts, allowed)
    one, two, frequent_pair = _conclusion_segments(
        mat, premises, max_premises, min_premise_count, chunk_samples, memory_budget_gb, spill_dir, progress
    )
    pair_rows = (premises.pair_p1[frequent_pair], premises.pair_p2[frequent_pair])
    return _rule_counts_from_segments(mat.shape[1], min_premise_count, one, two, pair_rows)


def rules_table(
    premises: PremiseCounts,
    rules: RuleCounts,
    *,
    beta: float = 1.0,
    min_premise_count: int = 1,
    min_rule_count: int = 1,
) -> pd.DataFrame:
    """Smoothed probabilities and filters on exact counts; rows sorted by (p1, p2, q), p2 = -1 first."""
    check_filters(beta, min_premise_count, min_rule_count)
    if min_premise_count < rules.min_premise_count:
        raise ValueError(
            f"min_premise_count={min_premise_count}: the rule counts were pruned at "
            f"min_premise_count={rules.min_premise_count}; recount with a threshold <= {min_premise_count}"
        )
    if premises.n_features != rules.n_features:
        raise ValueError("rules_table: premises and rules were counted over different numbers of features")
    one = (rules.one_p, rules.one_q, rules.one_n, premises.feature_counts[rules.one_p])
    return build_rules_table(
        one, _ArraySource(rules, premises, min_premise_count, min_rule_count), n_features=rules.n_features,
        beta=beta, min_premise_count=min_premise_count, min_rule_count=min_rule_count,
    )


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
        max_premises: 1 or 2.
        beta: smoothing pseudo-count of Eq. 3.
        min_premise_count: emit only rules with count(P) >= this (applied before conclusions
            are enumerated).
        min_rule_count: emit only rules with count(P, q) >= this (>= 1).
        allowed: feature ids or bool mask [C]; premises and conclusions are restricted to it.
        chunk_samples: samples per chunk of the sparse products.
        memory_budget_gb: RAM for partial tables and product blocks before spilling to disk
            (the returned table itself comes on top: 28 bytes per rule).
        spill_dir: where spilled partial tables go (system temp folder when None).
        progress: show tqdm progress bars.
        engine: ``"auto"`` (the native kernel of ``sal.rules.native`` when it is built and
            its scratch memory fits ``memory_budget_gb``, else the chunked sparse products),
            ``"native"`` (always the kernel) or ``"numpy"`` (always the chunked products, which
            spill partial tables to disk). All give identical tables.

    Returns:
        DataFrame with columns ``p1, p2, q, n_premise, n_rule, prob`` (int32 x 5, float64),
        ``p2 = -1`` for one-premise rules, sorted by (p1, p2, q).
    """
    check_filters(beta, min_premise_count, min_rule_count)
    _check_engine(max_premises, chunk_samples, memory_budget_gb)
    if engine not in ("auto", "native", "numpy"):
        raise ValueError(f"engine={engine!r}: choose 'auto', 'native' or 'numpy'")
    if engine == "native" and not native.available():
        raise ImportError(f"engine='native': {native.unavailable_reason()}; or pass engine='auto' / 'numpy'")
    mat = as_layer_count_csr(layer_counts, allowed)  # validate and restrict once
    if engine == "auto" and not native.available():
        warnings.warn(f"count_rules: {native.unavailable_reason()}. Counting with the numpy engine meanwhile "
                      "(same table, several times slower).", RuntimeWarning, stacklevel=2)
    if engine == "native" or (
        engine == "auto" and native.available() and native.scratch_bytes(mat) <= memory_budget_gb * 2**30
    ):
        return native.count_rules_native(
            mat, max_premises=max_premises, beta=beta, min_premise_count=min_premise_count,
            min_rule_count=min_rule_count, progress=progress,
        )
    opts = dict(chunk_samples=chunk_samples, memory_budget_gb=memory_budget_gb, spill_dir=spill_dir, progress=progress)
    premises = count_premises(mat, max_premises=max_premises, **opts)
    one, two, frequent_pair = _conclusion_segments(mat, premises, max_premises, min_premise_count, **opts)
    del mat
    c = premises.n_features
    pair_p1 = premises.pair_p1[frequent_pair]
    pair_p2 = premises.pair_p2[frequent_pair]
    pair_n = premises.pair_counts[frequent_pair]

    one_cols = _rule_counts_from_segments(c, min_premise_count, one, [], None)
    one_table = (one_cols.one_p, one_cols.one_q, one_cols.one_n, premises.feature_counts[one_cols.one_p])

    two_source = _SegmentSource(two, pair_p1, pair_p2, pair_n, min_rule_count)
    return build_rules_table(
        one_table, two_source, n_features=c, beta=beta,
        min_premise_count=min_premise_count, min_rule_count=min_rule_count,
    )
