"""Per-chunk sparse products that count rules (the inner loop of the numpy engine,
``sal.rules.numpy_engine``).

For a premise set P let ``m_P = min_{p in P} a_p`` be its weakest premise's layer count. Then
``[m_P > a_q > 0] = sum_u [m_P == u] [0 < a_q < u]`` over the distinct values u of the sample,
so for a chunk of samples

    count(P, q) = (K^T E)[P, q],   K[(n, u), P] = [m_P == u],   E[(n, u), q] = [0 < a_q < u]

with one row per (sample n, distinct non-minimal layer count u). K holds each co-occurring
premise set once per sample and E each active feature once per larger distinct value of its
sample, and the product (scipy's compiled SMMP kernel) visits exactly the (premise set,
conclusion, sample) triples that count, with a dense per-row accumulator instead of the
paper's C x C x C einsum and Python dictionary. It is computed as ``(E^T K)^T``: the final
CSR transposition is a counting sort that leaves the conclusions of every premise sorted.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
from tqdm.auto import tqdm

from sal.rules._csr import dense_value_ranks, row_ids, run_lengths, run_starts, within_row_pairs
from sal.rules.accumulate import CsrSegment


@dataclass(frozen=True)
class ConclusionRows:
    """E^T for one chunk plus, per stored entry of the chunk, its row of E (or -1)."""

    e_t: sp.csr_matrix
    """[C, R]: E transposed; E row (n, u) holds the features q of sample n with 0 < a_q < u."""
    e_len: np.ndarray
    """int64 [R]: number of conclusions in each row of E."""
    e_row_of_entry: np.ndarray
    """int64 [nnz]: the E row (n, a_c) of each entry, -1 when a_c is its sample's minimum."""
    rank_of_entry: np.ndarray
    """int64 [nnz]: dense rank of a_c within its sample (0 = smallest value)."""


def conclusion_rows(chunk: sp.csr_matrix) -> ConclusionRows:
    """Build E for a canonical CSR chunk of layer counts."""
    rows = row_ids(chunk.indptr)
    order, rank = dense_value_ranks(rows, chunk.data)
    rows_s, rank_s = rows[order], rank[order]
    group_pos = run_starts(rows_s, rank_s)
    # Sorting by (row, value) keeps each sample inside its CSR slot: its start is indptr[row].
    row_start = chunk.indptr[rows_s[group_pos]]
    has_concl = rank_s[group_pos] >= 1  # nothing lies below a sample's smallest value
    e_start = row_start[has_concl]
    e_len = (group_pos - row_start)[has_concl]
    e_indptr = np.r_[0, np.cumsum(e_len)]
    # E row (n, u) = the value-sorted prefix of sample n that stops before value u.
    src = np.repeat(e_start - e_indptr[:-1], e_len) + np.arange(e_indptr[-1])
    e = sp.csr_matrix(
        (np.ones(len(src), np.int32), chunk.indices[order][src], e_indptr), shape=(len(e_len), chunk.shape[1])
    )
    e_row_of_group = np.where(has_concl, np.cumsum(has_concl) - 1, -1)
    e_row = np.empty(len(order), dtype=np.int64)
    e_row[order] = np.repeat(e_row_of_group, run_lengths(group_pos, len(order)))
    return ConclusionRows(e.T.tocsr(), e_len, e_row, rank)


def premise_matrix(n_premises: int, premise_ids: np.ndarray, e_rows: np.ndarray, n_e_rows: int) -> sp.csr_matrix:
    """K^T as CSR [n_premises, R] from one (premise id, E row) pair per occurrence."""
    return sp.csr_matrix(
        (np.ones(len(premise_ids), np.int32), (premise_ids, e_rows)), shape=(n_premises, n_e_rows)
    )


def frequent_pair_occurrences(
    chunk: sp.csr_matrix, concl: ConclusionRows, premise_entries: np.ndarray, frequent_pair_keys: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """(frequent-pair index, E row of the weaker premise) for every frequent pair in every sample.

    ``premise_entries`` are the chunk entries allowed as premises (sorted positions);
    ``frequent_pair_keys`` the sorted keys p1 * C + p2 of the pairs passing Apriori.
    """
    c = chunk.shape[1]
    rows = row_ids(chunk.indptr)[premise_entries]
    first, second = within_row_pairs(rows)
    i, j = premise_entries[first], premise_entries[second]
    del first, second
    keys = chunk.indices[i].astype(np.int64) * c + chunk.indices[j]  # p1 < p2: indices sorted
    pid = np.searchsorted(frequent_pair_keys, keys)
    found = pid < len(frequent_pair_keys)
    found[found] = frequent_pair_keys[pid[found]] == keys[found]
    pid, i, j = pid[found], i[found], j[found]
    weaker = np.where(concl.rank_of_entry[i] <= concl.rank_of_entry[j], i, j)
    return pid, concl.e_row_of_entry[weaker]


# Premise rows per product block: the kernel's accumulator and the transposition's buckets
# hold one slot per premise row of the block, and stay in cache below ~64k rows.
MAX_ROWS_PER_BLOCK = 1 << 16


def product_segments(
    kt: sp.csr_matrix, concl: ConclusionRows, work_per_block: int, progress: str | None = None
) -> Iterator[CsrSegment]:
    """K^T @ E over blocks of premise rows; a block's work (an upper bound of its output size)
    stays near ``work_per_block`` and its rows below ``MAX_ROWS_PER_BLOCK``. ``progress``:
    a tqdm description to show a bar over the blocks (None: no bar)."""
    n_rows = kt.shape[0]
    work = np.bincount(
        np.repeat(np.arange(n_rows), np.diff(kt.indptr)), weights=concl.e_len[kt.indices], minlength=n_rows
    )
    cum = np.cumsum(work)
    total = float(cum[-1]) if n_rows else 0.0
    if total == 0:
        return
    n_blocks = max(1, math.ceil(total / work_per_block))
    cuts = np.searchsorted(cum, np.arange(1, n_blocks) * (total / n_blocks), side="left")
    bounds = np.unique(np.r_[0, cuts, np.arange(MAX_ROWS_PER_BLOCK, n_rows, MAX_ROWS_PER_BLOCK), n_rows])
    blocks = zip(bounds[:-1], bounds[1:])
    for a, b in tqdm(blocks, total=len(bounds) - 1, desc=progress, disable=progress is None, leave=False):
        if cum[b - 1] == (cum[a - 1] if a else 0.0):
            continue
        k_block = kt[a:b].T.tocsr()  # [R, b]
        prod = (concl.e_t @ k_block).T.tocsr()  # [b, C]; the transposition sorts the columns
        yield CsrSegment(int(a), prod.indptr.astype(np.int64), prod.indices.astype(np.int32, copy=False), prod.data.astype(np.int32, copy=False))
