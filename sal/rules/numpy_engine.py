"""The numpy engine: exact counts over chunks of samples with sparse products, in bounded memory.

``count_premises`` gives count(P) (``PremiseCounts``); ``conclusion_segments`` sums count(P, q)
over chunks of samples for the premises passing ``min_premise_count`` (the products are in
``sal.rules.products``; chunk partial sums go through ``KeyCountAccumulator``, which spills
to disk past the memory budget); ``count_conclusions`` returns them as ``RuleCounts``.

It is the fallback of ``count_rules`` where the native kernel (``sal.rules.native``) is not
built or its scratch memory exceeds the budget, and the engine of sharded counting
(``sal.rules.shard``), whose two phases need the premise counts apart from the rule counts.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import scipy.sparse as sp
from tqdm.auto import tqdm

from sal.faults import kill_point
from sal.rules._csr import as_layer_count_csr, row_ids
from sal.rules.accumulate import KeyCountAccumulator, KeySegment
from sal.rules.options import CountOptions
from sal.rules.products import conclusion_rows, frequent_pair_occurrences, premise_matrix, product_segments
from sal.rules.rule_counts import ConclusionSegments, PremiseCounts, RuleCounts

__all__ = ["count_premises", "conclusion_segments", "count_conclusions"]

# Transient bytes per unit of product work in one premise block (scipy's output, its
# transposition and the int32 copies); caps the block so transients stay ~1/4 of the budget.
_BYTES_PER_WORK = 64
# Larger blocks do not run faster: the kernel's per-block overhead is already amortised and
# bigger outputs fall out of cache.
_MAX_WORK_PER_BLOCK = 1 << 24


def _chunks(n_samples: int, chunk_samples: int) -> list[tuple[int, int]]:
    return [(s, min(s + chunk_samples, n_samples)) for s in range(0, n_samples, chunk_samples)]


def count_premises(layer_counts: Any, options: CountOptions = CountOptions(), *, allowed: Any = None) -> PremiseCounts:
    """Exact ``count(P)`` for every feature and, when ``max_premises == 2``, every feature pair."""
    mat = as_layer_count_csr(layer_counts, allowed)
    n_samples, c = mat.shape
    acc = KeyCountAccumulator(c, options.memory_budget_bytes, options.spill_dir)
    if options.max_premises == 2:
        chunks = _chunks(n_samples, options.chunk_samples)
        for a, b in tqdm(chunks, desc="premise pairs: sample chunks", disable=not options.progress or len(chunks) < 2):
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


def conclusion_segments(mat: sp.csr_matrix, premises: PremiseCounts, options: CountOptions) -> ConclusionSegments:
    """Summed count(P, q) on a canonical CSR (``as_layer_count_csr``) for the premises whose
    count(P) in ``premises`` passes ``options.min_premise_count``."""
    n_samples, c = mat.shape
    if premises.n_features != c:
        raise ValueError(
            f"premises: counted over {premises.n_features} features but layer_counts has {c}; "
            "count premises on the same (allowed-restricted) feature space"
        )
    budget, progress = options.memory_budget_bytes, options.progress
    work_per_block = int(min(_MAX_WORK_PER_BLOCK, max(1, budget // _BYTES_PER_WORK)))
    frequent_single = premises.feature_counts >= options.min_premise_count
    frequent_pair = premises.pair_counts >= options.min_premise_count
    frequent_keys = premises.pair_keys()[frequent_pair]  # ascending
    acc1 = KeyCountAccumulator(c, budget // 2, options.spill_dir)
    acc2 = KeyCountAccumulator(c, budget // 2, options.spill_dir)  # rows: frequent-pair index
    chunks = _chunks(n_samples, options.chunk_samples)
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
        if options.max_premises == 2 and len(frequent_keys):
            pid, e_rows = frequent_pair_occurrences(chunk, concl, sel, frequent_keys)
            kt2 = premise_matrix(len(frequent_keys), pid, e_rows, n_e_rows)
            del pid, e_rows
            acc2.add_run(list(product_segments(kt2, concl, work_per_block, "two-premise rules" if progress else None)))
            del kt2
        kill_point("count.chunk", "conclusions")
    return ConclusionSegments(premises, options.min_premise_count, acc1.result_segments(), acc2.result_segments(),
                              frequent_pair)


def count_conclusions(
    layer_counts: Any, premises: PremiseCounts, options: CountOptions = CountOptions(), *, allowed: Any = None
) -> RuleCounts:
    """Exact ``count(P, q) >= 1`` on ``layer_counts`` for premises passing ``options.min_premise_count``.

    ``premises`` must be the counts over the *whole* rule set (for a shard: the merged counts of
    all shards), so Apriori pruning keeps exactly the premises the final filter keeps; then
    ``RuleCounts.merge`` of the shards equals the single-process counts.
    """
    mat = as_layer_count_csr(layer_counts, allowed)
    return conclusion_segments(mat, premises, options).rule_counts()
