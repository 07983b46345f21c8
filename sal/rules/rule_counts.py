"""The exact counts of Appendix D as types that merge across shards, and the rules table they make.

Definitions (``a`` is one sample's layer-count vector, see ``sal.rules.aggregate``):

* one premise p, conclusion q != p: ``count(P) = #{n: a_p > 0}``,
  ``count(P, q) = #{n: a_p > a_q > 0}``;
* two premises p1 < p2, conclusion q not in {p1, p2}: ``count(P) = #{n: a_p1 > 0, a_p2 > 0}``,
  ``count(P, q) = #{n: a_p1 > a_q > 0 and a_p2 > a_q}``;
* ``prob = (count(P, q) + beta) / (count(P) + 2 beta)`` (Eq. 3).

* ``PremiseCounts``: count(P) of every feature and co-occurring pair; sums over disjoint
  sample sets with ``PremiseCounts.merge``.
* ``RuleCounts``: count(P, q) >= 1 for every premise set whose *global* count(P) passes
  ``min_premise_count`` (Apriori: the pruned premises are exactly the ones the final filter
  would drop); sums with ``RuleCounts.merge``.
* ``ConclusionSegments``: count(P, q) of one process as the numpy engine leaves it (sorted
  segments of a sparse table), turned into a ``RuleCounts`` or straight into the table.
* ``rules_table``: smoothing and filters -> DataFrame sorted by (p1, p2, q), p2 = -1 first.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import pandas as pd

from sal.rules._csr import run_lengths, run_starts
from sal.rules.accumulate import KeyCountAccumulator, KeySegment, Segment, merge_runs
from sal.rules.options import DEFAULT_MEMORY_BUDGET_GB, CountOptions
from sal.rules.table import build_rules_table, empty_column

__all__ = ["PremiseCounts", "RuleCounts", "ConclusionSegments", "rules_table"]


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
        starts = run_starts(p1, p2)
        group_keys = p1[starts].astype(np.int64) * self.n_features + p2[starts]
        keys = self.pair_keys()
        idx = np.minimum(np.searchsorted(keys, group_keys), max(len(keys) - 1, 0))
        if len(keys) == 0 or np.any(keys[idx] != group_keys):
            raise ValueError(
                "rules: a two-premise rule's premise pair never co-occurs in these PremiseCounts; "
                "pass the premise counts of the same (merged) rule set"
            )
        return np.repeat(self.pair_counts[idx], run_lengths(starts, len(p1)))


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


def _runs_of_repeated(values: np.ndarray, repeats: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(value of each run, length of each run) of ``np.repeat(values, repeats)`` for sorted
    ``values`` (``repeats`` None: each value once), without expanding it."""
    if len(values) == 0:
        return values[:0], np.zeros(0, np.int64)
    starts = run_starts(values)
    lengths = run_lengths(starts, len(values)) if repeats is None else np.add.reduceat(repeats, starts)
    return values[starts], lengths


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
                    run_p1, run_len = _runs_of_repeated(p1)
                else:
                    run_p1, run_len = _runs_of_repeated(self.pair_p1[rows], lengths)
                yield run_p1, run_len, p2, q, n_rule, n_premise
            del seg


class _ArraySource:
    """Two-premise rules from a RuleCounts (e.g. merged shards), filtered on the fly."""

    def __init__(self, rules: RuleCounts, premises: PremiseCounts, options: CountOptions, step: int = 1 << 18):
        self.rules, self.premises, self.options, self.step = rules, premises, options, step

    def _kept(self):
        r, o = self.rules, self.options
        for a in range(0, len(r.two_n), self.step):
            s = slice(a, a + self.step)
            p1, p2, q, n_rule = r.two_p1[s], r.two_p2[s], r.two_q[s], r.two_n[s]
            n_premise = self.premises.n_premise_of_pairs(p1, p2)
            kept = (n_rule >= o.min_rule_count) & (n_premise >= o.min_premise_count)
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
            run_p1, run_len = _runs_of_repeated(p1)
            yield run_p1, run_len, p2, q, n_rule, n_premise


@dataclass(frozen=True)
class ConclusionSegments:
    """Summed ``count(P, q)`` of one process as sorted segments of a sparse table.

    The segment lists are emptied by whichever of ``rule_counts`` / ``rules_table`` reads them
    (memory returns as the output fills), so read them once.
    """

    premises: PremiseCounts
    """count(P) the premises were pruned with (for a shard: the merged counts of all shards)."""
    min_premise_count: int
    """The Apriori threshold: only premises with count(P) >= this were enumerated."""
    one: list[Segment]
    """One-premise rules: segment rows are the premise p."""
    two: list[Segment]
    """Two-premise rules: segment rows index the frequent pairs (``frequent_pair``)."""
    frequent_pair: np.ndarray
    """bool [P]: which pairs of ``premises``' pair table passed the threshold."""

    def rule_counts(self) -> RuleCounts:
        p = self.premises
        pair_rows = (p.pair_p1[self.frequent_pair], p.pair_p2[self.frequent_pair])
        return _rule_counts_from_segments(p.n_features, self.min_premise_count, self.one, self.two, pair_rows)

    def rules_table(self, options: CountOptions) -> pd.DataFrame:
        """The rules table without a ``RuleCounts`` in between (no second copy of the rules)."""
        p, frequent = self.premises, self.frequent_pair
        one = _rule_counts_from_segments(p.n_features, self.min_premise_count, self.one, [], None)
        one_table = (one.one_p, one.one_q, one.one_n, p.feature_counts[one.one_p])
        two = _SegmentSource(self.two, p.pair_p1[frequent], p.pair_p2[frequent], p.pair_counts[frequent],
                             options.min_rule_count)
        return build_rules_table(one_table, two, p.n_features, options)


def rules_table(premises: PremiseCounts, rules: RuleCounts, options: CountOptions = CountOptions()) -> pd.DataFrame:
    """Smoothed probabilities and filters on exact counts; rows sorted by (p1, p2, q), p2 = -1 first.

    Reads ``options``' beta and filters; its ``min_premise_count`` may not be below the one
    the rules were pruned with (those premises were never enumerated).
    """
    if options.min_premise_count < rules.min_premise_count:
        raise ValueError(
            f"min_premise_count={options.min_premise_count}: the rule counts were pruned at "
            f"min_premise_count={rules.min_premise_count}; recount with a threshold <= {options.min_premise_count}"
        )
    if premises.n_features != rules.n_features:
        raise ValueError("rules_table: premises and rules were counted over different numbers of features")
    one = (rules.one_p, rules.one_q, rules.one_n, premises.feature_counts[rules.one_p])
    return build_rules_table(one, _ArraySource(rules, premises, options), rules.n_features, options)
