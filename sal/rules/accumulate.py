"""Exact sums of counts per (row, column) key over many sorted runs, in bounded memory.

The rule counter produces, per chunk of samples, a *run*: a list of segments, each a block of
premise rows with their conclusion columns and counts, ascending and disjoint across the
segments. Runs from different sample chunks (or shards) overlap and must be summed. Runs stay
in RAM until they outgrow a byte budget, then they are spilled to ``.npy`` files as packed
int64 keys (row * n_cols + col) with int32 counts, and everything is merged at the end key
range by key range, so the merge's working set stays near the budget on top of the result.
With a single run (the rule set fits one chunk) nothing is merged or copied at all.
"""

from __future__ import annotations

import os
import shutil
import socket
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np
import psutil

from sal.faults import kill_point
from sal.rules._csr import run_lengths, run_starts

BYTES_PER_KEY_ENTRY = 12  # int64 key + int32 count
# Upper bound of entries decoded at once when walking a segment (bounds transient arrays).
SLICE_ENTRIES = 1 << 18


@dataclass
class CsrSegment:
    """Rows ``first_row .. first_row + len(indptr) - 2`` of a sparse count table (CSR, sorted cols)."""

    first_row: int
    indptr: np.ndarray  # int64 [b + 1], indptr[0] == 0
    cols: np.ndarray  # int32 [nnz], ascending within each row
    counts: np.ndarray  # int32 [nnz], all >= 1

    def __len__(self) -> int:
        return len(self.cols)

    def row_runs(self, max_entries: int | None = None) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]]:
        """Yield (row ids, entries per row, cols, counts) over consecutive row ranges."""
        max_entries = max_entries or SLICE_ENTRIES
        n_rows = len(self.indptr) - 1
        cuts = np.searchsorted(self.indptr, np.arange(max_entries, len(self), max_entries), side="right") - 1
        bounds = np.unique(np.r_[0, cuts, n_rows])
        for ra, rb in zip(bounds[:-1], bounds[1:]):
            a, b = self.indptr[ra], self.indptr[rb]
            if b == a:
                continue
            rows = np.arange(self.first_row + ra, self.first_row + rb, dtype=np.int64)
            yield rows, np.diff(self.indptr[ra : rb + 1]), self.cols[a:b], self.counts[a:b]

    def keys(self, n_cols: int) -> np.ndarray:
        rows = np.repeat(np.arange(self.first_row, self.first_row + len(self.indptr) - 1, dtype=np.int64), np.diff(self.indptr))
        rows *= n_cols
        rows += self.cols
        return rows


@dataclass
class KeySegment:
    """Sorted, unique packed keys (row * n_cols + col) with their counts."""

    key_array: np.ndarray  # int64
    counts: np.ndarray  # int32
    n_cols: int

    def __len__(self) -> int:
        return len(self.key_array)

    def row_runs(self, max_entries: int | None = None) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]]:
        """Yield (row ids, entries per row, cols, counts) over consecutive key ranges."""
        max_entries = max_entries or SLICE_ENTRIES
        for a in range(0, len(self), max_entries):
            k = np.asarray(self.key_array[a : a + max_entries])
            rows = k // self.n_cols
            starts = run_starts(rows)
            cols = (k - rows * self.n_cols).astype(np.int32)
            yield rows[starts], run_lengths(starts, len(k)), cols, np.asarray(self.counts[a : a + max_entries])

    def keys(self, n_cols: int) -> np.ndarray:
        assert n_cols == self.n_cols
        return np.asarray(self.key_array)


Segment = CsrSegment | KeySegment


def sum_sorted(keys: np.ndarray, counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Collapse equal neighbours of a sorted key array, summing their counts."""
    if len(keys) < 2:
        return keys, counts
    start = run_starts(keys)
    if len(start) == len(keys):
        return keys, counts
    return keys[start], np.add.reduceat(counts, start).astype(counts.dtype, copy=False)


def merge_runs(runs: list[tuple[np.ndarray, np.ndarray]]) -> tuple[np.ndarray, np.ndarray]:
    """Sum several sorted (keys, counts) runs into one sorted, duplicate-free run."""
    runs = [r for r in runs if len(r[0])]
    if not runs:
        return np.zeros(0, np.int64), np.zeros(0, np.int32)
    if len(runs) == 1:
        return np.asarray(runs[0][0]), np.asarray(runs[0][1])
    keys = np.concatenate([r[0] for r in runs])
    counts = np.concatenate([r[1] for r in runs])
    # Timsort (kind="stable") detects the pre-sorted runs: close to a k-way merge.
    order = np.argsort(keys, kind="stable")
    return sum_sorted(keys[order], counts[order])


def _run_keys(run: list[Segment], n_cols: int) -> tuple[np.ndarray, np.ndarray]:
    if len(run) == 1:
        return run[0].keys(n_cols), run[0].counts
    return np.concatenate([s.keys(n_cols) for s in run]), np.concatenate([s.counts for s in run])


SPILL_PREFIX = "sal_rules_spill_"
"""Spill folders are named ``<prefix><pid>-<host>-<random>``: a killed process leaves its
folder behind (a kill -9 runs no cleanup), and the next spill on that host removes it."""


def remove_dead_spills(parent: str | None = None) -> int:
    """Remove the spill folders in ``parent`` (the system temporary folder when None) left by
    processes of this host that no longer run; returns how many. Folders of live processes
    and of other hosts (a shared filesystem) are left alone."""
    parent = parent if parent is not None else tempfile.gettempdir()
    host = socket.gethostname()
    removed = 0
    try:
        names = os.listdir(parent)
    except OSError:
        return 0
    for name in names:
        if not name.startswith(SPILL_PREFIX):
            continue
        pid, _, rest = name[len(SPILL_PREFIX):].partition("-")
        if not pid.isdigit() or not rest.startswith(f"{host}-") or psutil.pid_exists(int(pid)):
            continue
        shutil.rmtree(os.path.join(parent, name), ignore_errors=True)
        removed += 1
    return removed


@dataclass
class KeyCountAccumulator:
    """Sums runs of segments; spills to ``spill_dir`` when RAM use passes ``memory_budget_bytes``."""

    n_cols: int
    """Number of columns of the count table (packs keys as row * n_cols + col)."""
    memory_budget_bytes: int
    """RAM allowed for runs held in memory before they are written to disk."""
    spill_dir: str | None = None
    """Folder for spilled runs (a fresh temporary folder inside it; removed when merged)."""
    _runs: list[list[Segment]] = field(default_factory=list)
    _in_memory_bytes: int = 0
    _spilled: list[tuple[str, str]] = field(default_factory=list)
    _tmpdir: str | None = None

    @property
    def n_spilled_runs(self) -> int:
        return len(self._spilled)

    def add_run(self, segments: list[Segment]) -> None:
        segments = [s for s in segments if len(s)]
        if not segments:
            return
        size = sum(len(s) for s in segments) * BYTES_PER_KEY_ENTRY
        if self._runs and self._in_memory_bytes + size > self.memory_budget_bytes:
            self._spill()
        self._runs.append(segments)
        self._in_memory_bytes += size

    def _spill(self) -> None:
        if self._tmpdir is None:
            if self.spill_dir is not None:
                os.makedirs(self.spill_dir, exist_ok=True)
            remove_dead_spills(self.spill_dir)
            self._tmpdir = tempfile.mkdtemp(prefix=f"{SPILL_PREFIX}{os.getpid()}-{socket.gethostname()}-",
                                            dir=self.spill_dir)
        for run in self._runs:
            keys, counts = _run_keys(run, self.n_cols)
            base = os.path.join(self._tmpdir, f"run{len(self._spilled):05d}")
            np.save(base + ".keys.npy", keys)
            np.save(base + ".counts.npy", counts)
            self._spilled.append((base + ".keys.npy", base + ".counts.npy"))
            kill_point("count.spill")
        self._runs = []
        self._in_memory_bytes = 0

    def result_segments(self) -> list[Segment]:
        """The summed table as ascending, disjoint segments; empties the accumulator."""
        try:
            if not self._spilled and len(self._runs) <= 1:
                return self._runs.pop() if self._runs else []
            sources = [(np.load(k, mmap_mode="r"), np.load(c, mmap_mode="r")) for k, c in self._spilled]
            sources += [_run_keys(run, self.n_cols) for run in self._runs]
            self._runs = []
            return [KeySegment(k, c, self.n_cols) for k, c in _range_merge(sources, self.memory_budget_bytes) if len(k)]
        finally:
            self.cleanup()

    def result(self) -> tuple[np.ndarray, np.ndarray]:
        """The summed table as one (keys ascending and unique, int32 counts) pair."""
        segments = self.result_segments()
        if not segments:
            return np.zeros(0, np.int64), np.zeros(0, np.int32)
        return _run_keys(segments, self.n_cols)

    def cleanup(self) -> None:
        if self._tmpdir is not None:
            shutil.rmtree(self._tmpdir, ignore_errors=True)
            self._tmpdir = None
            self._spilled = []


def _range_merge(sources: list[tuple[np.ndarray, np.ndarray]], budget_bytes: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """Merge sorted (possibly memory-mapped) sources key range by key range."""
    total = sum(len(k) for k, _ in sources)
    if total == 0:
        return []
    # One step holds the slices, their concatenation and the sort order: ~3x the entries.
    n_ranges = max(1, int(np.ceil(3 * total * BYTES_PER_KEY_ENTRY / max(budget_bytes, 1))))
    sample = np.sort(np.concatenate([np.asarray(k[:: max(1, len(k) // 4096)]) for k, _ in sources if len(k)]))
    cuts = np.unique(sample[(np.arange(1, n_ranges) * len(sample)) // n_ranges]) if n_ranges > 1 else sample[:0]
    pieces = []
    edges = [None, *cuts.tolist(), None]
    for lo, hi in zip(edges[:-1], edges[1:]):
        parts = []
        for keys, counts in sources:
            a = 0 if lo is None else int(np.searchsorted(keys, lo, side="left"))
            b = len(keys) if hi is None else int(np.searchsorted(keys, hi, side="left"))
            if b > a:
                parts.append((np.array(keys[a:b]), np.array(counts[a:b])))
        pieces.append(merge_runs(parts))
    return pieces
