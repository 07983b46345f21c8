"""count_rules against a brute-force reference written from the definitions, and its edges."""

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from rules_reference import brute_force_rules

import dataclasses

import sal.rules.accumulate as accumulate
from sal.rules import CountOptions, count_rules
from sal.rules._csr import run_lengths, run_starts
from sal.rules.accumulate import KeyCountAccumulator, KeySegment, merge_runs

INT_COLS = ["p1", "p2", "q", "n_premise", "n_rule"]


def random_layer_counts(rng, n_samples, n_features, density=0.7, max_count=3):
    """Layer counts 0..max_count: few distinct values, so many ties between features."""
    values = rng.integers(1, max_count + 1, size=(n_samples, n_features))
    return values * (rng.random((n_samples, n_features)) < density)


def assert_same_rules(got: pd.DataFrame, want: pd.DataFrame):
    assert list(got.columns) == ["p1", "p2", "q", "n_premise", "n_rule", "prob"]
    assert len(got) == len(want)
    np.testing.assert_array_equal(got[INT_COLS].to_numpy(), want[INT_COLS].to_numpy())
    np.testing.assert_allclose(got["prob"].to_numpy(), want["prob"].to_numpy(), rtol=1e-12)


@pytest.mark.parametrize("seed", range(12))
@pytest.mark.parametrize("max_premises", [1, 2])
def test_matches_brute_force(seed, max_premises):
    rng = np.random.default_rng(seed)
    a = random_layer_counts(rng, int(rng.integers(1, 14)), int(rng.integers(2, 9)), density=rng.uniform(0.3, 0.9))
    kwargs = dict(
        max_premises=max_premises,
        beta=float(rng.choice([0.0, 0.5, 1.0, 3.0])),
        min_premise_count=int(rng.integers(1, 4)),
        min_rule_count=int(rng.integers(1, 3)),
    )
    assert_same_rules(count_rules(a, **kwargs, chunk_samples=int(rng.integers(1, 6))), brute_force_rules(a, **kwargs))


@pytest.mark.parametrize("seed", range(6))
def test_allowed_restricts_premises_and_conclusions(seed):
    rng = np.random.default_rng(100 + seed)
    a = random_layer_counts(rng, 10, 8)
    allowed = rng.choice(8, size=int(rng.integers(0, 9)), replace=False)
    want = brute_force_rules(a, allowed=allowed, min_premise_count=2)
    assert_same_rules(count_rules(a, allowed=allowed, min_premise_count=2), want)
    mask = np.zeros(8, dtype=bool)
    mask[allowed] = True
    assert_same_rules(count_rules(a, allowed=mask, min_premise_count=2), want)
    assert set(want["p1"]) | set(want["q"]) <= set(allowed.tolist())


def test_hand_computed_example():
    # sample 0: a = (2, 1, 0); sample 1: a = (1, 1, 3)
    a = np.array([[2, 1, 0], [1, 1, 3]])
    got = count_rules(a, beta=1.0)
    rows = {tuple(r[:3]): tuple(r[3:5]) for r in got[INT_COLS].itertuples(index=False)}
    # one premise: 0 -> 1 only in sample 0 (2 > 1); 2 -> 0 and 2 -> 1 only in sample 1 (3 > 1)
    assert rows == {
        (0, -1, 1): (2, 1),
        (2, -1, 0): (1, 1),
        (2, -1, 1): (1, 1),
    }  # pairs (0,1): min 1 beats nothing; (0,2), (1,2) co-occur once with min 1: no conclusion
    assert got["prob"].tolist() == pytest.approx([(1 + 1) / (2 + 2), (1 + 1) / (1 + 2), (1 + 1) / (1 + 2)])
    # two premises need both premises strictly above the conclusion
    b = np.array([[3, 2, 1, 0], [3, 3, 3, 1], [2, 2, 0, 2]])
    got2 = count_rules(b, max_premises=2)
    two = got2[got2.p2 >= 0].set_index(["p1", "p2", "q"])
    assert two.loc[(0, 1, 2), "n_rule"] == 1 and two.loc[(0, 1, 2), "n_premise"] == 3
    assert two.loc[(0, 1, 3), "n_rule"] == 1  # sample 1 only; sample 2 ties (2, 2, 2)
    assert two.loc[(0, 2, 3), "n_rule"] == 1 and two.loc[(0, 2, 3), "n_premise"] == 2
    assert (1, 2, 0) not in two.index  # a_0 is never below both


def test_output_sorted_and_typed():
    rng = np.random.default_rng(7)
    got = count_rules(random_layer_counts(rng, 30, 12))
    keys = got[["p1", "p2", "q"]].to_numpy()
    order = np.lexsort((keys[:, 2], keys[:, 1], keys[:, 0]))
    np.testing.assert_array_equal(order, np.arange(len(got)))
    assert [str(t) for t in got.dtypes] == ["int32"] * 5 + ["float64"]
    assert (got.loc[got.p2 >= 0, "p1"] < got.loc[got.p2 >= 0, "p2"]).all()


def test_dense_and_sparse_inputs_agree():
    rng = np.random.default_rng(3)
    a = random_layer_counts(rng, 25, 10)
    want = count_rules(a)
    for variant in (a.astype(np.int8), a.astype(np.uint16), sp.csr_matrix(a), sp.csc_matrix(a), sp.coo_matrix(a)):
        pd.testing.assert_frame_equal(count_rules(variant), want)


def test_empty_and_degenerate_inputs():
    assert len(count_rules(np.zeros((5, 4), dtype=int))) == 0
    assert len(count_rules(np.zeros((0, 4), dtype=int))) == 0
    assert len(count_rules(np.ones((6, 4), dtype=int))) == 0  # all tied: nothing strictly below
    for engine in ("auto", "numpy"):
        assert len(count_rules(np.zeros((3, 0), dtype=int), engine=engine)) == 0  # no features at all


def test_invalid_inputs_explain_the_fix():
    with pytest.raises(TypeError, match="integer"):
        count_rules(np.ones((2, 2)) * 0.5)
    with pytest.raises(ValueError, match="negative"):
        count_rules(np.array([[1, -1]]))
    with pytest.raises(ValueError, match="min_rule_count"):
        count_rules(np.ones((2, 2), dtype=int), min_rule_count=0)
    with pytest.raises(ValueError, match="max_premises"):
        count_rules(np.ones((2, 2), dtype=int), max_premises=3)
    with pytest.raises(ValueError, match="allowed"):
        count_rules(np.ones((2, 3), dtype=int), allowed=np.ones(2, dtype=bool))
    with pytest.raises(ValueError, match="allowed"):
        count_rules(np.ones((2, 3), dtype=int), allowed=[5])


def test_spill_path_gives_identical_results(monkeypatch, tmp_path):
    rng = np.random.default_rng(11)
    a = random_layer_counts(rng, 60, 12, density=0.5)
    want = count_rules(a, min_premise_count=2)
    spills = []
    original = KeyCountAccumulator._spill
    monkeypatch.setattr(KeyCountAccumulator, "_spill", lambda self: (spills.append(1), original(self)))
    monkeypatch.setattr(accumulate, "SLICE_ENTRIES", 7)  # walk segments in tiny slices too
    got = count_rules(a, min_premise_count=2, chunk_samples=4, memory_budget_gb=1e-7, spill_dir=str(tmp_path))
    assert spills, "the tiny budget should have forced spills"
    pd.testing.assert_frame_equal(got, want)
    assert list(tmp_path.iterdir()) == []  # spill folders are removed


def test_accumulator_range_merge_sums_overlapping_runs():
    rng = np.random.default_rng(5)
    runs = []
    for _ in range(6):
        keys = np.unique(rng.integers(0, 500, size=200))
        runs.append((keys, rng.integers(1, 5, size=len(keys)).astype(np.int32)))
    acc = KeyCountAccumulator(n_cols=10, memory_budget_bytes=1000)
    for k, c in runs:
        acc.add_run([KeySegment(k[: len(k) // 2], c[: len(k) // 2], 10), KeySegment(k[len(k) // 2 :], c[len(k) // 2 :], 10)])
    assert acc.n_spilled_runs > 0
    keys, counts = acc.result()
    dense = np.zeros(500, np.int64)
    for k, c in runs:
        np.add.at(dense, k, c)
    np.testing.assert_array_equal(keys, np.flatnonzero(dense))
    np.testing.assert_array_equal(counts, dense[dense > 0])
    k2, c2 = merge_runs(runs)
    np.testing.assert_array_equal(k2, keys)
    np.testing.assert_array_equal(c2, counts)


def test_run_starts_over_one_and_several_keys():
    first = np.array([0, 0, 1, 1, 1, 2, 2])
    second = np.array([5, 6, 6, 6, 7, 7, 7])
    starts = run_starts(first)
    np.testing.assert_array_equal(starts, [0, 2, 5])
    np.testing.assert_array_equal(run_lengths(starts, len(first)), [2, 3, 2])
    both = run_starts(first, second)  # a run ends where either key changes
    np.testing.assert_array_equal(both, [0, 1, 2, 4, 5])
    np.testing.assert_array_equal(run_lengths(both, len(first)), [1, 1, 2, 1, 2])
    assert starts.dtype == np.int64 and run_starts(first[:1]).tolist() == [0]
    empty = run_starts(first[:0], second[:0])
    assert empty.dtype == np.int64 and len(empty) == 0 and len(run_lengths(empty, 0)) == 0


@pytest.mark.parametrize(
    "field,value",
    [("max_premises", 3), ("beta", -0.5), ("beta", float("nan")), ("min_premise_count", 0), ("min_rule_count", 0),
     ("chunk_samples", 0), ("memory_budget_gb", 0.0)],
)
def test_count_options_validate_and_name_the_field(field, value):
    with pytest.raises(ValueError, match=f"{field}="):
        CountOptions(**{field: value})
    with pytest.raises(ValueError, match=f"{field}="):  # count_rules builds the same object first
        count_rules(np.ones((2, 2), dtype=int), **{field: value})


def test_count_options_are_frozen():
    options = CountOptions(min_premise_count=3)
    with pytest.raises(dataclasses.FrozenInstanceError):
        options.min_premise_count = 1
    assert dataclasses.replace(options, progress=True).min_premise_count == 3
