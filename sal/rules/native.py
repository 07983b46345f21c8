"""Native fast path of ``count_rules``: the C kernel of ``_kernel.c``, loaded with ctypes.

Same definitions and same output as the numpy engine (``sal.rules.numpy_engine``), which
stays the pure-numpy fallback when the kernel was not built (no C compiler at install time)
and the engine of the sharded two-phase counting. The algorithm is described at the top of
``_kernel.c``: one walk per first premise p1, pairs (p1, p2) grouped by a counting sort so that
Apriori drops rare pairs before any conclusion is read, precomputed per-sample conclusion lists.

Two passes over the first premises: the first counts the rules of every p1 exactly, so the
output columns are allocated once at their final size; the second writes each p1's rules at its
offset. Blocks of first premises run in Python threads (ctypes releases the GIL around the C
calls). Scratch memory is O(C + the largest sum of row lengths over one feature's samples) per
thread plus the conclusion lists (row length x distinct layer counts per sample): no partial
tables, nothing to spill.
"""

from __future__ import annotations

import ctypes
import importlib.machinery
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.sparse as sp
from tqdm.auto import tqdm

from sal.faults import kill_point
from sal.rules.options import CountOptions
from sal.rules.table import RULE_COLUMNS, empty_table_columns

__all__ = ["available", "unavailable_reason", "scratch_bytes", "count_rules_native"]

# Must equal SAL_KERNEL_ABI in _kernel.c: a build older than the source is refused, not run.
_KERNEL_ABI = 3
# First premises per kernel call: enough to amortise the call, small enough for a progress bar
# and for balancing the threads.
_P1_PER_BLOCK = 512

_REBUILD = "rebuild it with `make install` (or `pip install -e .`; it needs a C compiler)"

_P = ctypes.c_void_p
_I64 = ctypes.c_int64


class _Problem(ctypes.Structure):
    """``sal_problem`` of _kernel.c: the arrays and filters every thread shares."""

    _fields_ = [(name, _P) for name in (
        "indptr", "indices", "data", "start", "below", "lists", "col_ptr", "col_rows", "col_entries")] + [
        ("max_premises", _I64), ("min_premise_count", _I64), ("min_rule_count", _I64), ("beta", ctypes.c_double),
    ] + [(name, _P) for name in (
        "sizes", "offsets", "out_p1", "out_p2", "out_q", "out_n_premise", "out_n_rule", "out_prob")]


class _ScratchStruct(ctypes.Structure):
    """``sal_scratch`` of _kernel.c."""

    _fields_ = [(name, _P) for name in (
        "acc", "tlist", "cnt", "touched", "fill", "occ_p2", "occ_e", "srt_e", "words", "summary")] + [
        ("n_summary", _I64)]


_PACKAGE_DIR = Path(__file__).resolve().parent


def _load_kernel(directory: Path = _PACKAGE_DIR) -> tuple[ctypes.CDLL | None, str]:
    """The compiled kernel in ``directory`` (this package's), or None and why not."""
    found = [directory / f"_kernel{suffix}" for suffix in importlib.machinery.EXTENSION_SUFFIXES]
    found = [path for path in found if path.is_file()]
    if not found:
        return None, f"the native kernel sal/rules/_kernel was not built; {_REBUILD}"
    try:
        lib = ctypes.CDLL(str(found[0]))
    except OSError as err:
        return None, f"the native kernel {found[0]} does not load ({err}); {_REBUILD}"
    lib.sal_kernel_abi.restype = _I64
    if lib.sal_kernel_abi() != _KERNEL_ABI:
        return None, f"the native kernel {found[0]} is stale (built from an older _kernel.c); {_REBUILD}"
    lib.sal_conclusion_lists_size.restype = _I64
    lib.sal_conclusion_lists_size.argtypes = [_I64, _P, _P, _P]
    lib.sal_conclusion_lists.restype = None
    lib.sal_conclusion_lists.argtypes = [_I64, _P, _P, _P, _P, _P, _P, _P]
    lib.sal_rules_of_block.restype = None
    lib.sal_rules_of_block.argtypes = [ctypes.POINTER(_Problem), ctypes.POINTER(_ScratchStruct), _I64, _I64,
                                       ctypes.c_int32]
    return lib, ""


_LIB, _WHY_NOT = _load_kernel()


def available() -> bool:
    """Whether the native kernel is built and loads (the fast path can run)."""
    return _LIB is not None


def unavailable_reason() -> str:
    """Why ``available()`` is False (empty when it is True)."""
    return _WHY_NOT


def _ptr(array: np.ndarray) -> int:
    assert array.flags.c_contiguous
    return array.ctypes.data


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
    return max(1, min(32, n_cpus))


def scratch_bytes(mat: sp.csr_matrix) -> int:
    """Working memory of the fast path beyond the input and the output table."""
    c = mat.shape[1]
    gather = int(_row_len_sums(mat).max()) if mat.nnz else 0
    per_thread = 4 * 4 * c + 8 * c + 20 * gather
    # CSC copy, sorted rows, per-entry list starts and sizes, and the conclusion lists (at most
    # the sum of the squared row lengths; about row length x distinct layer counts per sample)
    row_len = np.diff(mat.indptr).astype(np.int64)
    return 40 * mat.nnz + 8 * (c + 1) + 4 * int((row_len * row_len).sum()) // 2 + _n_threads() * per_thread


class _Scratch:
    """Per-thread working arrays of ``sal_rules_of_block`` (zero between calls)."""

    def __init__(self, c: int, gather: int):
        self.acc, self.tlist, self.cnt, self.touched = (np.zeros(c, np.int32) for _ in range(4))
        self.fill = np.zeros(c, np.int64)
        self.occ_p2 = np.empty(max(gather, 1), np.int32)
        self.occ_e, self.srt_e = np.empty(max(gather, 1), np.int64), np.empty(max(gather, 1), np.int64)
        n_words = max(1, -(-c // 64))
        self.words, self.summary = np.zeros(n_words, np.uint64), np.zeros(-(-n_words // 64), np.uint64)
        self.struct = _ScratchStruct(
            *(_ptr(a) for a in (self.acc, self.tlist, self.cnt, self.touched, self.fill, self.occ_p2, self.occ_e,
                                self.srt_e, self.words, self.summary)),
            len(self.summary),
        )


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


def _conclusion_lists(indptr: np.ndarray, indices: np.ndarray, data: np.ndarray):
    """(start, below, lists) of ``sal_conclusion_lists``: per CSR entry, its conclusion list."""
    n_rows = len(indptr) - 1
    sorted_rows = np.empty(max(len(data), 1), np.int32)  # each row's layer counts, sorted once
    size = _LIB.sal_conclusion_lists_size(n_rows, _ptr(indptr), _ptr(data), _ptr(sorted_rows))
    start = np.zeros(len(indices), np.int64)
    below = np.zeros(len(indices), np.int32)
    lists = np.empty(max(size, 1), np.int32)
    _LIB.sal_conclusion_lists(n_rows, _ptr(indptr), _ptr(indices), _ptr(data), _ptr(start), _ptr(below),
                              _ptr(lists), _ptr(sorted_rows))
    return start, below, lists


def _csr_and_csc(mat: sp.csr_matrix) -> tuple[np.ndarray, ...]:
    """(indptr, indices, data, col_ptr, col_rows, col_entries) as the kernel reads them: the CSR
    and, per feature, its samples with the position of each entry in the CSR as CSC "values"."""
    indptr = np.ascontiguousarray(mat.indptr, dtype=np.int64)
    indices = np.ascontiguousarray(mat.indices, dtype=np.int32)
    data = np.ascontiguousarray(mat.data, dtype=np.int32)
    entry_ids = sp.csr_matrix((np.arange(mat.nnz, dtype=np.int64), indices, indptr), shape=mat.shape)
    csc = entry_ids.tocsc()
    col_ptr = np.ascontiguousarray(csc.indptr, dtype=np.int64)
    col_rows = np.ascontiguousarray(csc.indices, dtype=np.int32)
    col_entries = np.ascontiguousarray(csc.data, dtype=np.int64)
    return indptr, indices, data, col_ptr, col_rows, col_entries


def _run_blocks(problem: _Problem, scratch: list[_Scratch], blocks: list[tuple[int, int]], write: bool,
                progress: bool) -> None:
    """One pass of ``sal_rules_of_block`` over ``blocks`` of first premises, one thread per scratch set."""
    bar = tqdm(total=len(blocks), desc="rules: writing" if write else "rules: counting", disable=not progress,
               leave=False)
    queue = iter(blocks)
    lock = threading.Lock()

    def lane(slot: int) -> None:  # each thread owns one scratch set and pulls blocks
        while True:
            with lock:
                blk = next(queue, None)
            if blk is None:
                return
            _LIB.sal_rules_of_block(ctypes.byref(problem), ctypes.byref(scratch[slot].struct), blk[0], blk[1],
                                    int(write))
            bar.update()
            kill_point("native.block", "write" if write else "count")

    if len(scratch) == 1 or len(blocks) == 1:
        lane(0)
    else:
        with ThreadPoolExecutor(len(scratch)) as pool:
            list(pool.map(lane, range(len(scratch))))
    bar.close()


def count_rules_native(mat: sp.csr_matrix, options: CountOptions) -> pd.DataFrame:
    """``count_rules`` on a canonical int32 CSR (``as_layer_count_csr``)."""
    if _LIB is None:
        raise ImportError(f"{_WHY_NOT}, or use engine='numpy'")
    c = mat.shape[1]
    indptr, indices, data, col_ptr, col_rows, col_entries = _csr_and_csc(mat)
    feature_counts = np.diff(col_ptr)
    start, below, lists = _conclusion_lists(indptr, indices, data)
    gather_per_p1 = _row_len_sums(mat)
    gather = int(gather_per_p1.max()) if mat.nnz else 0
    work = gather_per_p1 * (options.max_premises == 2) + feature_counts + 1

    n_threads = _n_threads()
    scratch = [_Scratch(c, gather) for _ in range(n_threads)]
    sizes = np.zeros(c, np.int64)
    offsets = np.zeros(c, np.int64)
    shared = (indptr, indices, data, start, below, lists, col_ptr, col_rows, col_entries)
    problem = _Problem(*(_ptr(a) for a in shared), options.max_premises, options.min_premise_count,
                       options.min_rule_count, float(options.beta),
                       _ptr(sizes), _ptr(offsets))  # output columns: set before the writing pass

    n_blocks = max(n_threads * 8, -(-c // _P1_PER_BLOCK))
    _run_blocks(problem, scratch, _balanced_blocks(work, n_blocks), False, options.progress)
    total = int(sizes.sum())
    offsets[1:] = np.cumsum(sizes)[:-1]
    cols = empty_table_columns(total)
    for field, name in zip(("out_p1", "out_p2", "out_q", "out_n_premise", "out_n_rule", "out_prob"), RULE_COLUMNS):
        setattr(problem, field, _ptr(cols[name]) if total else None)
    if total:  # the writing pass is dominated by the rules written: balance its blocks on them
        _run_blocks(problem, scratch, _balanced_blocks(work + sizes, n_blocks), True, options.progress)
    return pd.DataFrame(cols, copy=False)
