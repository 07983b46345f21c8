"""Optional numba fast path of ``count_rules``: one walk per first premise, straight into the table.

Same definitions and same output as the sparse-product engine (``sal.rules.engine``), which
stays the pure-numpy fallback when numba is not installed, and the engine of the sharded
two-phase counting. Here every first premise p1 is handled on its own, in ascending order:

* its samples (a column of the CSC copy) are the occurrences of the premise {p1}, each with
  threshold u = a_p1; the conclusions of one occurrence are the features of that sample with
  0 < a_q < u;
* the pairs (p1, p2), p2 > p1, are gathered from those same samples with threshold
  u = min(a_p1, a_p2) and grouped by p2 with a counting sort; count(P) of a pair is its group
  size, so Apriori (``min_premise_count``) drops whole groups before any conclusion is read;
* the conclusion lists are precomputed once per (sample, distinct layer count), in feature
  order, so a premise seen in one sample copies its list (most pairs; counted in O(1)); one
  seen in several sums them in a dense per-feature accumulator, then emits the touched
  features in order (insertion sort when few, else a two-level bitset, linear in their number).

Two passes: the first only counts the rules of every p1 (exact, so the output columns are
allocated once at their final size), the second writes each p1's rules at its offset. Blocks
of first premises run in threads (the kernels release the GIL). Scratch memory is O(C + the
largest sum of row lengths over one feature's samples) per thread plus the conclusion lists
(row length x distinct layer counts per sample): no partial tables, nothing to spill.
"""

from __future__ import annotations

import os
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pandas as pd
import scipy.sparse as sp
from tqdm.auto import tqdm

from sal.rules.table import RULE_COLUMNS, empty_column

try:  # optional dependency: `pip install numba`
    import numba
except ImportError:  # pragma: no cover - exercised where numba is absent
    numba = None

__all__ = ["available", "scratch_bytes", "count_rules_fast"]

# First premises per kernel call: enough to amortise the call, small enough for a progress bar
# and for balancing the threads.
_P1_PER_BLOCK = 512
# Below this many distinct conclusions an insertion sort orders them faster than the bitset.
_INSERTION_SORT_MAX = 32


def available() -> bool:
    """Whether numba is importable (the fast path can run)."""
    return numba is not None


def _row_len_sums(mat: sp.csr_matrix) -> np.ndarray:
    """Per feature: the summed row lengths of the samples where it is active (gather size)."""
    row_len = np.diff(mat.indptr)
    rows = np.repeat(np.arange(mat.shape[0]), row_len)
    return np.bincount(mat.indices, weights=row_len[rows], minlength=mat.shape[1]).astype(np.int64)


def _n_threads() -> int:
    """Threads for the kernel: the CPUs this process may use (scratch is O(C) per thread)."""
    try:
        n_cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        n_cpus = os.cpu_count() or 1
    return max(1, min(8, n_cpus))


def scratch_bytes(mat: sp.csr_matrix) -> int:
    """Working memory of the fast path beyond the input and the output table."""
    c = mat.shape[1]
    gather = int(_row_len_sums(mat).max()) if mat.nnz else 0
    per_thread = 4 * 5 * c + 20 * gather
    # CSC copy, per-entry list starts and sizes, and the conclusion lists (at most the sum of
    # the squared row lengths; about row length x distinct layer counts per sample)
    row_len = np.diff(mat.indptr).astype(np.int64)
    return 36 * mat.nnz + 8 * (c + 1) + 4 * int((row_len * row_len).sum()) // 2 + _n_threads() * per_thread


if numba is not None:
    _jit = numba.njit(cache=True, nogil=True)

    _DEBRUIJN = np.uint64(0x03F79D71B4CB0A89)
    _DEBRUIJN_INDEX = np.array(
        [0, 1, 48, 2, 57, 49, 28, 3, 61, 58, 50, 42, 38, 29, 17, 4, 62, 55, 59, 36, 53, 51, 43, 22, 45, 39, 33, 30,
         24, 18, 12, 5, 63, 47, 56, 27, 60, 41, 37, 16, 54, 35, 52, 21, 44, 32, 23, 11, 46, 26, 40, 15, 34, 20, 31,
         10, 25, 14, 19, 9, 13, 8, 7, 6], dtype=np.int64)

    @_jit
    def _lowest_bit(x):
        """Index of the lowest set bit of a non-zero uint64 (de Bruijn multiplication)."""
        return _DEBRUIJN_INDEX[((x & (~x + np.uint64(1))) * _DEBRUIJN) >> np.uint64(58)]

    @_jit
    def _bitset_add(words, summary, q):
        w = q >> 6
        words[w] |= np.uint64(1) << np.uint64(q & 63)
        summary[w >> 6] |= np.uint64(1) << np.uint64(w & 63)

    @_jit
    def _bitset_drain(words, summary, out):
        """Write the set members in ascending order to ``out``, clear the set, return the count.
        Costs O(members + len(summary)) instead of a sort."""
        t = 0
        for sw in range(summary.shape[0]):
            x = summary[sw]
            while x:
                w = sw * 64 + _lowest_bit(x)
                y = words[w]
                while y:
                    out[t] = w * 64 + _lowest_bit(y)
                    t += 1
                    y &= y - np.uint64(1)
                words[w] = np.uint64(0)
                x &= x - np.uint64(1)
            summary[sw] = np.uint64(0)
        return t

    @_jit
    def _conclusion_lists(indptr, indices, data):
        """Per entry (sample n, feature c): the features q of n with a_q < a_c in feature order,
        as ``lists[start[e] : start[e] + below[e]]``; entries of one sample with equal layer
        counts share one list. Returns (start, below, lists)."""
        n_rows = indptr.shape[0] - 1
        nnz = indices.shape[0]
        start = np.zeros(nnz, np.int64)
        below = np.zeros(nnz, np.int32)
        size = 0
        for n in range(n_rows):  # list sizes: one list per distinct value above the row minimum
            a, b = indptr[n], indptr[n + 1]
            vals = np.sort(data[a:b])
            for i in range(1, b - a):
                if vals[i] != vals[i - 1]:
                    size += i
        lists = np.empty(size, np.int32)
        pos = 0
        for n in range(n_rows):
            a, b = indptr[n], indptr[n + 1]
            vals = np.sort(data[a:b])
            for j in range(a, b):
                below[j] = np.searchsorted(vals, data[j])
            for i in range(1, b - a):
                if vals[i] != vals[i - 1]:
                    u = vals[i]
                    first = pos
                    for j in range(a, b):
                        if data[j] < u:
                            lists[pos] = indices[j]
                            pos += 1
                        elif data[j] == u:
                            start[j] = first
        return start, below, lists

    @_jit
    def _accumulate_conclusions(occ, a, b, start, below, lists, acc, tlist):
        """Sum the conclusion lists of occurrences ``occ[a:b]`` into ``acc``; the distinct
        conclusions go to ``tlist`` in first-seen order. Returns how many there are."""
        t = 0
        for i in range(a, b):
            e = occ[i]
            s = start[e]
            for k in range(s, s + below[e]):
                q = lists[k]
                if acc[q] == 0:
                    tlist[t] = q
                    t += 1
                acc[q] += 1
        return t

    @_jit
    def _group(occ, a, b, start, below, lists, min_rule_count, acc, tlist, words, summary, write, at,
               p1, p2, n_premise, beta, out_p1, out_p2, out_q, out_np, out_nr, out_prob):
        """Rules of one premise set from its occurrences ``occ[a:b]`` (entry of its weakest
        premise); returns how many pass ``min_rule_count``, written from ``at`` when ``write``."""
        denom = np.float64(n_premise) + 2.0 * beta
        if b - a == 1:  # one sample: every conclusion has count 1, already in feature order
            if min_rule_count > 1:
                return 0
            e = occ[a]
            m = below[e]
            if write:
                s = start[e]
                prob = (np.float64(1) + beta) / denom
                for t in range(m):
                    out_q[at + t] = lists[s + t]
                for t in range(at, at + m):
                    out_p1[t] = p1
                    out_p2[t] = p2
                    out_np[t] = n_premise
                    out_nr[t] = 1
                    out_prob[t] = prob
            return m
        m = 0
        if not write:
            t = _accumulate_conclusions(occ, a, b, start, below, lists, acc, tlist)
            for k in range(t):
                q = tlist[k]
                if acc[q] >= min_rule_count:
                    m += 1
                acc[q] = 0
            return m
        t = _accumulate_conclusions(occ, a, b, start, below, lists, acc, tlist)
        if t <= _INSERTION_SORT_MAX:  # few conclusions: insertion sort
            for k in range(1, t):
                q = tlist[k]
                i = k - 1
                while i >= 0 and tlist[i] > q:
                    tlist[i + 1] = tlist[i]
                    i -= 1
                tlist[i + 1] = q
        else:  # many: order them through a bitset, linear in their number
            for k in range(t):
                _bitset_add(words, summary, tlist[k])
            t = _bitset_drain(words, summary, tlist)
        for k in range(t):
            q = tlist[k]
            v = acc[q]
            if v >= min_rule_count:
                o = at + m
                out_p1[o] = p1
                out_p2[o] = p2
                out_q[o] = q
                out_np[o] = n_premise
                out_nr[o] = v
                out_prob[o] = (np.float64(v) + beta) / denom
                m += 1
            acc[q] = 0
        return m

    @_jit
    def _rules_of_block(p1_lo, p1_hi, write, offsets, sizes, indptr, indices, data, start, below, lists,
                        col_ptr, col_rows, col_entries, max_premises, min_premise_count, min_rule_count, beta,
                        acc, tlist, cnt, touched, fill, occ_p2, occ_e, srt_e, words, summary,
                        out_p1, out_p2, out_q, out_np, out_nr, out_prob):
        """Count (``write`` False: into ``sizes``) or write (at ``offsets``) the rules of every
        first premise in [p1_lo, p1_hi)."""
        for p1 in range(p1_lo, p1_hi):
            s = col_ptr[p1]
            e = col_ptr[p1 + 1]
            n_p1 = e - s
            if n_p1 < min_premise_count or n_p1 == 0:
                continue
            if write and sizes[p1] == 0:
                continue
            at = offsets[p1] if write else 0
            total = _group(col_entries, s, e, start, below, lists, min_rule_count, acc, tlist, words, summary,
                           write, at, p1, -1, n_p1, beta, out_p1, out_p2, out_q, out_np, out_nr, out_prob)
            if max_premises == 2:
                m = 0
                for i in range(s, e):
                    n = col_rows[i]
                    e1 = col_entries[i]
                    u1 = data[e1]
                    for j in range(indptr[n], indptr[n + 1]):
                        p2 = indices[j]
                        if p2 <= p1 or col_ptr[p2 + 1] - col_ptr[p2] < min_premise_count:
                            continue
                        occ_p2[m] = p2
                        occ_e[m] = j if data[j] < u1 else e1  # the weaker premise sets the threshold
                        m += 1
                        if cnt[p2] == 0:
                            _bitset_add(words, summary, p2)
                        cnt[p2] += 1
                nt = _bitset_drain(words, summary, touched)
                p2s = touched[:nt]
                off = 0
                for k in range(nt):
                    p2 = p2s[k]
                    fill[p2] = off
                    if cnt[p2] >= min_premise_count:
                        off += cnt[p2]
                if off:
                    for i in range(m):  # counting sort of the frequent pairs' occurrences by p2
                        p2 = occ_p2[i]
                        if cnt[p2] >= min_premise_count:
                            o = fill[p2]
                            srt_e[o] = occ_e[i]
                            fill[p2] = o + 1
                for k in range(nt):
                    p2 = p2s[k]
                    k_p2 = cnt[p2]
                    if k_p2 == 1 and k_p2 >= min_premise_count:
                        # the common case, inlined: one sample, conclusions copied in feature order
                        e1 = srt_e[fill[p2] - 1]
                        m1 = below[e1] if min_rule_count == 1 else 0
                        if write and m1:
                            o = at + total
                            s1 = start[e1]
                            prob = (np.float64(1) + beta) / (np.float64(1) + 2.0 * beta)
                            for t in range(m1):
                                out_q[o + t] = lists[s1 + t]
                            for t in range(o, o + m1):
                                out_p1[t] = p1
                                out_p2[t] = p2
                                out_np[t] = 1
                                out_nr[t] = 1
                                out_prob[t] = prob
                        total += m1
                    elif k_p2 >= min_premise_count:
                        b = fill[p2]
                        total += _group(srt_e, b - k_p2, b, start, below, lists, min_rule_count, acc, tlist,
                                        words, summary, write, at + total, p1, p2, k_p2, beta,
                                        out_p1, out_p2, out_q, out_np, out_nr, out_prob)
                    cnt[p2] = 0
            if not write:
                sizes[p1] = total


class _Scratch:
    """Per-thread working arrays of ``_rules_of_block``."""

    def __init__(self, c: int, gather: int):
        self.acc, self.tlist, self.cnt, self.touched, self.fill = (np.zeros(c, np.int32) for _ in range(5))
        self.occ_p2 = np.empty(gather, np.int32)
        self.occ_e, self.srt_e = np.empty(gather, np.int64), np.empty(gather, np.int64)
        n_words = -(-c // 64)
        self.words, self.summary = np.zeros(n_words, np.uint64), np.zeros(-(-n_words // 64), np.uint64)

    def arrays(self):
        return (self.acc, self.tlist, self.cnt, self.touched, self.fill, self.occ_p2, self.occ_e, self.srt_e,
                self.words, self.summary)


def _balanced_blocks(work: np.ndarray, n_blocks: int) -> list[tuple[int, int]]:
    """Contiguous ranges of first premises with similar work."""
    c = len(work)
    cum = np.cumsum(work, dtype=np.float64)
    total = cum[-1] if c else 0.0
    if total == 0:
        return [(0, c)] if c else []
    cuts = np.searchsorted(cum, np.arange(1, n_blocks) * (total / n_blocks), side="left")
    bounds = np.unique(np.r_[0, np.minimum(cuts + 1, c), c])
    return [(int(a), int(b)) for a, b in zip(bounds[:-1], bounds[1:]) if b > a]


def count_rules_fast(
    mat: sp.csr_matrix,
    *,
    max_premises: int,
    beta: float,
    min_premise_count: int,
    min_rule_count: int,
    progress: bool = False,
) -> pd.DataFrame:
    """``count_rules`` on a canonical int32 CSR (``as_layer_count_csr``), filters checked."""
    if numba is None:
        raise ImportError("the numba fast path needs numba: `pip install numba`, or use engine='numpy'")
    c = mat.shape[1]
    indptr = mat.indptr.astype(np.int64, copy=False)
    indices = mat.indices.astype(np.int32, copy=False)
    data = mat.data.astype(np.int32, copy=False)
    # per feature: its samples and, as the CSC "values", the position of each entry in the CSR
    entry_ids = sp.csr_matrix((np.arange(mat.nnz, dtype=np.int64), indices, indptr), shape=mat.shape)
    csc = entry_ids.tocsc()
    col_ptr = csc.indptr.astype(np.int64, copy=False)
    col_rows = csc.indices.astype(np.int32, copy=False)
    col_entries = csc.data
    feature_counts = np.diff(col_ptr).astype(np.int64)
    start, below, lists = _conclusion_lists(indptr, indices, data)
    gather_per_p1 = _row_len_sums(mat)
    gather = int(gather_per_p1.max()) if mat.nnz else 0
    work = gather_per_p1 * (max_premises == 2) + feature_counts + 1

    n_threads = _n_threads()
    scratch = [_Scratch(c, gather) for _ in range(n_threads)]
    sizes = np.zeros(c, np.int64)
    offsets = np.zeros(c, np.int64)
    dummy_i = np.zeros(0, np.int32)
    dummy_f = np.zeros(0, np.float64)
    common = (indptr, indices, data, start, below, lists, col_ptr, col_rows, col_entries,
              max_premises, min_premise_count, min_rule_count, float(beta))

    def run(pass_name: str, write: bool, outs, blocks) -> None:
        bar = tqdm(total=len(blocks), desc=pass_name, disable=not progress, leave=False)
        queue = iter(blocks)
        lock = threading.Lock()

        def lane(slot: int) -> None:  # each thread owns one scratch set and pulls blocks
            while True:
                with lock:
                    blk = next(queue, None)
                if blk is None:
                    return
                _rules_of_block(blk[0], blk[1], write, offsets, sizes, *common, *scratch[slot].arrays(), *outs)
                bar.update()

        if n_threads == 1 or len(blocks) == 1:
            lane(0)
        else:
            with ThreadPoolExecutor(n_threads) as pool:
                list(pool.map(lane, range(n_threads)))
        bar.close()

    n_blocks = max(n_threads * 8, -(-c // _P1_PER_BLOCK))
    run("rules: counting", False, (dummy_i,) * 5 + (dummy_f,), _balanced_blocks(work, n_blocks))
    total = int(sizes.sum())
    offsets[1:] = np.cumsum(sizes)[:-1]
    cols = {name: empty_column(total, np.float64 if name == "prob" else np.int32) for name in RULE_COLUMNS}
    # the writing pass is dominated by the rules written: balance its blocks on them
    run("rules: writing", True, tuple(cols[name] for name in RULE_COLUMNS), _balanced_blocks(work + sizes, n_blocks))
    return pd.DataFrame(cols, copy=False)
