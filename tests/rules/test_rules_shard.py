"""Sharded counting: merged shards equal one process, shards resume, Fabric with 2 processes."""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

import sal.rules.shard as shard
from sal.rules import (
    CountOptions,
    count_rules,
    count_shard_premises,
    count_shard_rules,
    merge_shards,
    shard_path,
    shard_range,
)


def layer_counts(seed=0, n=37, c=11):
    rng = np.random.default_rng(seed)
    return rng.integers(1, 4, size=(n, c)) * (rng.random((n, c)) < 0.5)


def run_in_process(a, out_dir, world_size, min_premise_count, allowed=None):
    """All ranks' phases one after the other, as the Fabric barriers order them."""
    shards = [a[slice(*shard_range(len(a), r, world_size))] for r in range(world_size)]
    for r, s in enumerate(shards):
        count_shard_premises(s, r, world_size, str(out_dir), allowed=allowed)
    for r, s in enumerate(shards):
        count_shard_rules(s, r, world_size, str(out_dir), CountOptions(min_premise_count=min_premise_count),
                          allowed=allowed)
    return [shard_path(str(out_dir), r) for r in range(world_size)]


def test_shard_ranges_cover_samples():
    for n in (0, 1, 7, 10):
        for w in (1, 2, 3, 4):
            ranges = [shard_range(n, r, w) for r in range(w)]
            assert ranges[0][0] == 0 and ranges[-1][1] == n
            assert all(a[1] == b[0] for a, b in zip(ranges, ranges[1:]))
            assert max(e - s for s, e in ranges) - min(e - s for s, e in ranges) <= 1


@pytest.mark.parametrize("world_size,min_premise_count", [(1, 1), (3, 1), (3, 4), (5, 6)])
def test_merged_shards_equal_single_process(tmp_path, world_size, min_premise_count):
    a = layer_counts(world_size)
    allowed = np.arange(0, 11, 2) if world_size == 3 else None
    paths = run_in_process(a, tmp_path, world_size, min_premise_count, allowed)
    got = merge_shards(paths, CountOptions(beta=0.5, min_premise_count=min_premise_count, min_rule_count=2))
    want = count_rules(a, beta=0.5, min_premise_count=min_premise_count, min_rule_count=2, allowed=allowed)
    assert len(want) > 0
    pd.testing.assert_frame_equal(got, want)
    # a stricter premise filter at merge time is still exact; a looser one is refused
    pd.testing.assert_frame_equal(
        merge_shards(paths, CountOptions(min_premise_count=min_premise_count + 3)),
        count_rules(a, min_premise_count=min_premise_count + 3, allowed=allowed),
    )
    # without options the merge filters at the threshold the shards were pruned with
    pd.testing.assert_frame_equal(
        merge_shards(paths), count_rules(a, min_premise_count=min_premise_count, allowed=allowed)
    )
    if min_premise_count > 1:
        with pytest.raises(ValueError, match="pruned"):
            merge_shards(paths, CountOptions(min_premise_count=1))


def test_finished_shards_are_skipped_and_stale_ones_recounted(tmp_path, monkeypatch):
    a = layer_counts(1)
    paths = run_in_process(a, tmp_path, 2, 2)
    stamps = [os.stat(p).st_mtime_ns for p in paths]

    def fail(*args, **kwargs):
        raise AssertionError("a finished shard was recounted")

    monkeypatch.setattr(shard, "count_premises", fail)
    monkeypatch.setattr(shard, "count_conclusions", fail)
    run_in_process(a, tmp_path, 2, 2)  # resumed: nothing recounted
    assert [os.stat(p).st_mtime_ns for p in paths] == stamps
    monkeypatch.undo()
    # new settings -> recount and the merge follows them
    run_in_process(a, tmp_path, 2, 3)
    pd.testing.assert_frame_equal(merge_shards(paths), count_rules(a, min_premise_count=3))


def test_incomplete_shards_are_refused(tmp_path):
    a = layer_counts(2)
    paths = run_in_process(a, tmp_path, 3, 1)
    with pytest.raises(ValueError, match="complete"):
        merge_shards(paths[:2])
    Path(paths[2]).write_bytes(b"truncated")
    with pytest.raises(ValueError, match="not finished"):
        merge_shards(paths)


def test_fabric_two_cpu_processes_match_single_process(tmp_path):
    a = layer_counts(3, n=41)
    data = tmp_path / "layer_counts.npz"
    sp.save_npz(data, sp.csr_matrix(a))
    out_dir = tmp_path / "run"
    script = Path(__file__).with_name("fabric_rules_script.py")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    proc = subprocess.run(
        [sys.executable, str(script), str(data), str(out_dir), "2", "2"],
        capture_output=True, text=True, timeout=300, env=env,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert sorted(p.name for p in (out_dir / "shards").iterdir()) == [
        "rank0.npz", "rank0.premises.npz", "rank1.npz", "rank1.premises.npz",
    ]
    got = pd.read_parquet(out_dir / "merged.parquet")
    want = count_rules(a, min_premise_count=2, beta=0.5)
    pd.testing.assert_frame_equal(got, want)
