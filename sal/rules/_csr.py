"""Input normalisation and vectorised per-sample index helpers shared by the counters.

Everything downstream works on one canonical representation of the layer counts: a
``scipy.sparse.csr_matrix`` of int32 with sorted column indices, no explicit zeros, and the
columns outside ``allowed`` removed. Removing a feature's column is exact for every count in
Appendix D: ``count(P)`` only reads premise features and ``count(P, q)`` only reads the
premise features and ``q``, so a feature that may be neither premise nor conclusion can never
influence a kept rule.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np
import scipy.sparse as sp

# (p1 * C + p2) * C + q must fit in int64 for the merge keys of two-premise rules.
MAX_FEATURES = 2**21


def allowed_mask(allowed: Any, n_features: int) -> np.ndarray | None:
    """Return a bool mask [C] from ``allowed`` (None, bool mask [C] or feature ids)."""
    if allowed is None:
        return None
    arr = np.asarray(list(allowed) if not hasattr(allowed, "__array__") and isinstance(allowed, Iterable) else allowed)
    if arr.dtype == bool:
        if arr.shape != (n_features,):
            raise ValueError(
                f"allowed: a boolean mask must have shape ({n_features},) to match the "
                f"{n_features} feature columns of layer_counts, got {arr.shape}; pass a mask "
                "over all features or a list of feature ids"
            )
        return arr.copy()
    if arr.size and not np.issubdtype(arr.dtype, np.integer):
        raise TypeError(f"allowed: expected feature ids (integers) or a boolean mask, got dtype {arr.dtype}")
    ids = arr.astype(np.int64).ravel()
    if ids.size and (ids.min() < 0 or ids.max() >= n_features):
        raise ValueError(
            f"allowed: feature ids must lie in [0, {n_features}), got range "
            f"[{ids.min()}, {ids.max()}]; drop ids outside the crosscoder's dictionary"
        )
    mask = np.zeros(n_features, dtype=bool)
    mask[ids] = True
    return mask


def as_layer_count_csr(layer_counts: Any, allowed: Any = None) -> sp.csr_matrix:
    """Canonical int32 CSR [n_samples, C] of non-negative layer counts, restricted to ``allowed``.

    Accepts a dense integer (or bool) array, anything ``np.asarray`` understands (e.g. a CPU
    torch tensor), or any ``scipy.sparse`` matrix/array with an integer dtype.
    """
    if sp.issparse(layer_counts):
        mat = sp.csr_matrix(layer_counts)  # copy-free when already CSR
        dtype = mat.dtype
    else:
        if hasattr(layer_counts, "detach"):  # torch tensor without importing torch
            layer_counts = layer_counts.detach().cpu().numpy()
        dense = np.asarray(layer_counts)
        if dense.ndim != 2:
            raise ValueError(
                f"layer_counts: expected a 2-D array [n_samples, n_features], got shape {dense.shape}; "
                "stack one layer-count vector per sample (sal.rules.stack_layer_counts)"
            )
        dtype = dense.dtype
        mat = None
    if not (np.issubdtype(dtype, np.integer) or dtype == bool):
        raise TypeError(
            f"layer_counts: expected integer layer counts, got dtype {dtype}; threshold the "
            "activations first (sal.rules.aggregate_sample) and pass the resulting counts"
        )
    if mat is None:
        mat = sp.csr_matrix(dense)
    n_samples, n_features = mat.shape
    if n_features > MAX_FEATURES:
        raise ValueError(
            f"layer_counts: {n_features} features exceed the supported {MAX_FEATURES} "
            "(rule keys are packed into int64); restrict with `allowed` and re-index the features"
        )
    if n_samples >= 2**31:
        raise ValueError(f"layer_counts: {n_samples} samples exceed int32 counts; shard the rule set")
    if mat.nnz and mat.data.min() < 0:
        raise ValueError(
            "layer_counts: negative values found; layer counts are numbers of layers (or tokens) "
            "where a feature fired and must be >= 0"
        )
    if mat.nnz and mat.data.max() >= 2**31:
        raise ValueError("layer_counts: values must fit in int32")
    out = sp.csr_matrix(
        (mat.data.astype(np.int32), mat.indices.astype(np.int32), mat.indptr.astype(np.int64)),
        shape=mat.shape,
        copy=True,
    )
    mask = allowed_mask(allowed, n_features)
    if mask is not None:
        # Zero the disallowed columns; eliminate_zeros drops them from the structure.
        out.data[~mask[out.indices]] = 0
    out.eliminate_zeros()
    out.sum_duplicates()  # sorts indices; a no-op on canonical input
    return out


def run_starts(*keys: np.ndarray) -> np.ndarray:
    """int64 start index of every run of consecutive equal entries of ``keys`` (one or more
    arrays of one length; with several, a run is where all of them repeat). Empty for no entries."""
    if len(keys[0]) == 0:
        return np.zeros(0, np.int64)
    new_run = keys[0][1:] != keys[0][:-1]
    for key in keys[1:]:
        new_run |= key[1:] != key[:-1]
    return np.flatnonzero(np.r_[True, new_run])


def run_lengths(starts: np.ndarray, n: int) -> np.ndarray:
    """Length of every run, from ``run_starts`` of an array of ``n`` entries."""
    return np.diff(np.r_[starts, n])


def row_ids(indptr: np.ndarray) -> np.ndarray:
    """Row id (sample index within the chunk) of every stored entry of a CSR matrix."""
    return np.repeat(np.arange(len(indptr) - 1, dtype=np.int64), np.diff(indptr))


def within_row_pairs(rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """All ordered position pairs (i, j), i < j, of entries that share a row.

    ``rows`` is the (non-decreasing) row id of each entry. Returns the two position arrays,
    row-major and lexicographic inside each row, so that when entries within a row are sorted
    by feature id the pairs come out with p1 < p2 and in (p1, p2) order.
    """
    n = len(rows)
    if n == 0:
        empty = np.zeros(0, dtype=np.int64)
        return empty, empty
    starts = run_starts(rows)
    lengths = run_lengths(starts, n)
    row_end = np.repeat(starts + lengths, lengths)
    pos = np.arange(n, dtype=np.int64)
    partners = row_end - pos - 1  # entries after i in its row
    total = int(partners.sum())
    first = np.repeat(pos, partners)
    # offset of each pair inside its first-entry group: arange minus the group's start
    group_start = np.cumsum(partners) - partners
    offsets = np.arange(total, dtype=np.int64) - np.repeat(group_start, partners)
    second = first + 1 + offsets
    return first, second


def dense_value_ranks(rows: np.ndarray, values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Dense rank of each entry's value inside its row (0 = the row's smallest value).

    Returns ``(order, rank)`` where ``order`` sorts the entries by (row, value) (stable, so
    equal values keep feature order) and ``rank`` is indexed like the input entries.
    """
    order = np.lexsort((values, rows))
    r_sorted = rows[order]
    value_starts = run_starts(r_sorted, values[order])
    group_id = np.repeat(np.arange(len(value_starts)), run_lengths(value_starts, len(order)))
    row_starts = run_starts(r_sorted)
    # rank = group index minus the group index of the row's first entry
    rank_sorted = group_id - np.repeat(group_id[row_starts], run_lengths(row_starts, len(order)))
    rank = np.empty_like(rank_sorted)
    rank[order] = rank_sorted
    return order, rank
