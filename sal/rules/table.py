"""Turn exact counts into the rules table: smoothing, filters, (p1, p2, q) order, low memory.

The table is the largest object of the stage (28 bytes per rule; hundreds of millions of
rules on long traces), so it is written in place: the columns are allocated once, the few
one-premise rules are scattered to their rows, and the two-premise rules stream in, slice by
slice, as masked copies into the remaining rows (no sort, no concatenation). Count segments are
released as soon as they are copied, so peak memory stays close to the table itself.

Order: by (p1, p2, q) with p2 = -1 for one-premise rules, so the one-premise rules of p come
right before the two-premise rules whose first premise is p.
"""

from __future__ import annotations

import mmap
from collections.abc import Iterator
from typing import Protocol

import numpy as np
import pandas as pd

from sal.rules.options import CountOptions

RULE_COLUMNS = ("p1", "p2", "q", "n_premise", "n_rule", "prob")

# (p1 of each run, length of each run, p2, q, n_rule, n_premise): kept rules, (p1, p2, q)-sorted
TwoPremiseSlice = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]


class TwoPremiseSource(Protocol):
    """Kept two-premise rules in (p1, p2, q) order, produced twice (counting pass, fill pass)."""

    def kept_per_p1(self, n_features: int) -> np.ndarray:
        """int64 [C]: number of kept rules per first premise."""

    def slices(self) -> Iterator[TwoPremiseSlice]:
        """The kept rules, slice by slice (may release memory as it goes)."""


# Columns at least this large are mapped directly from the kernel (see ``empty_column``).
_MMAP_MIN_BYTES = 1 << 22


def empty_column(n: int, dtype) -> np.ndarray:
    """Uninitialised array for a big output column, written once front to back.

    numpy advises the kernel to back large arrays with transparent huge pages; where the
    kernel then compacts memory on the first write (THP defrag=madvise, common on VMs) that
    costs up to several times the fill itself. A private anonymous mapping gets ordinary
    pages without that advice; the array keeps the mapping alive and behaves as usual.
    """
    dtype = np.dtype(dtype)
    if n * dtype.itemsize < _MMAP_MIN_BYTES:
        return np.empty(n, dtype)
    buffer = mmap.mmap(-1, n * dtype.itemsize, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    return np.frombuffer(buffer, dtype=dtype, count=n)


def empty_table_columns(n_rules: int) -> dict[str, np.ndarray]:
    """Uninitialised columns of a rules table (``RULE_COLUMNS``), filled by the caller."""
    return {name: empty_column(n_rules, np.float64 if name == "prob" else np.int32) for name in RULE_COLUMNS}


def build_rules_table(
    one: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray],
    two: TwoPremiseSource,
    n_features: int,
    options: CountOptions,
) -> pd.DataFrame:
    """Assemble the DataFrame from one-premise arrays (p, q, n_rule, n_premise) sorted by
    (p, q), unfiltered, and a source of already filtered two-premise rules."""
    beta = options.beta
    p_one, q_one, nr_one, np_one = one
    keep = (nr_one >= options.min_rule_count) & (np_one >= options.min_premise_count)
    if not keep.all():
        p_one, q_one, nr_one, np_one = p_one[keep], q_one[keep], nr_one[keep], np_one[keep]

    two_per_p1 = np.asarray(two.kept_per_p1(n_features), dtype=np.int64)
    total = len(p_one) + int(two_per_p1.sum())
    cols = empty_table_columns(total)

    # One-premise rules of p go after every two-premise rule with p1 < p (a small scatter) ...
    pos_one = np.arange(len(p_one)) + np.r_[0, np.cumsum(two_per_p1)][p_one]
    is_two = np.ones(total, dtype=bool)
    is_two[pos_one] = False
    for name, values in zip(RULE_COLUMNS, (p_one, -1, q_one, np_one, nr_one, (nr_one + beta) / (np_one + 2.0 * beta))):
        cols[name][pos_one] = values
    del pos_one
    # ... and two-premise rule j (in order) lands at j + #one-premise rules with p <= p1_j, so a
    # slice of them fills the free (is_two) slots of one contiguous window: masked copies.
    one_upto = np.cumsum(np.bincount(p_one, minlength=n_features)) if n_features else np.zeros(0, np.int64)
    done = 0
    for run_p1, run_len, p2, q, n_rule, n_premise in two.slices():
        if len(q) == 0:
            continue
        nonempty = run_p1[run_len > 0]
        lo = done + int(one_upto[nonempty[0]])
        hi = done + len(q) - 1 + int(one_upto[nonempty[-1]]) + 1
        free = is_two[lo:hi]
        p1 = np.repeat(run_p1, run_len)
        prob = (n_rule + beta) / (n_premise + 2.0 * beta)
        for name, values in zip(RULE_COLUMNS, (p1, p2, q, n_premise, n_rule, prob)):
            cols[name][lo:hi][free] = values
        done += len(q)
    if done != total - len(p_one):
        raise RuntimeError(f"two-premise source yielded {done} rules, announced {total - len(p_one)}")
    return pd.DataFrame(cols, copy=False)
