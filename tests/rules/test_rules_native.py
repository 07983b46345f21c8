"""The native kernel of count_rules (sal.rules.native) and its pure-numpy fallback give the same
tables as the brute-force reference and as each other."""

import importlib.machinery
import shutil
import subprocess

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from rules_reference import brute_force_rules

import sal.rules.native as native
from sal.rules import count_rules

needs_kernel = pytest.mark.skipif(not native.available(), reason=native.unavailable_reason())
ENGINES = [pytest.param("native", marks=needs_kernel), "numpy"]
INT_COLS = ["p1", "p2", "q", "n_premise", "n_rule"]


def skewed_layer_counts(rng, n_samples, n_features, mean_active, max_count):
    """Sparse counts with a few very popular features, so premise sets recur across samples."""
    popularity = 1.0 / np.arange(1, n_features + 1)
    popularity /= popularity.sum()
    rows, cols = [], []
    for n in range(n_samples):
        k = int(np.clip(rng.poisson(mean_active), 1, n_features))
        cols.append(rng.choice(n_features, size=k, replace=False, p=popularity))
        rows.append(np.full(k, n))
    r, c = np.concatenate(rows), np.concatenate(cols)
    values = rng.integers(1, max_count + 1, size=len(r))
    return sp.csr_matrix((values, (r, c)), shape=(n_samples, n_features))


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("seed", range(8))
def test_each_engine_matches_brute_force(engine, seed):
    rng = np.random.default_rng(500 + seed)
    # up to 70 features: feature ids cross a 64-bit word of the kernel's ordering bitset
    n_features = int(rng.integers(2, 71))
    a = rng.integers(1, 4, size=(int(rng.integers(1, 16)), n_features))
    a = a * (rng.random(a.shape) < rng.uniform(0.1, 0.9))
    allowed = None if seed % 3 else rng.choice(n_features, size=max(1, n_features // 2), replace=False)
    kwargs = dict(
        max_premises=int(rng.integers(1, 3)),
        beta=float(rng.choice([0.0, 0.5, 1.0])),
        min_premise_count=int(rng.integers(1, 4)),
        min_rule_count=int(rng.integers(1, 3)),
        allowed=allowed,
    )
    got = count_rules(a, engine=engine, **kwargs)
    want = brute_force_rules(a, **kwargs)
    assert len(got) == len(want)
    np.testing.assert_array_equal(got[INT_COLS].to_numpy(), want[INT_COLS].to_numpy())
    np.testing.assert_allclose(got["prob"].to_numpy(), want["prob"].to_numpy(), rtol=1e-12)


@needs_kernel
@pytest.mark.parametrize(
    "n_features, max_count, min_premise_count, min_rule_count",
    [(9000, 4, 1, 1), (9000, 60, 2, 1), (300, 3, 3, 2)],
)
def test_kernel_and_fallback_agree_exactly(monkeypatch, n_features, max_count, min_premise_count, min_rule_count):
    # Larger than brute force allows: > 64 * 64 features (several summary words of the
    # bitset), many distinct layer counts, popular premises seen in many samples.
    rng = np.random.default_rng(n_features + max_count)
    a = skewed_layer_counts(rng, 150, n_features, mean_active=25, max_count=max_count)
    kwargs = dict(min_premise_count=min_premise_count, min_rule_count=min_rule_count)
    want = count_rules(a, engine="numpy", chunk_samples=64, **kwargs)
    assert len(want) > 1000 and (want["n_rule"] > 1).any() and (want["p2"] == -1).any()
    pd.testing.assert_frame_equal(count_rules(a, engine="native", **kwargs), want, check_exact=True)
    monkeypatch.setattr(native, "_n_threads", lambda: 1)  # one thread: same table
    pd.testing.assert_frame_equal(count_rules(a, engine="native", **kwargs), want, check_exact=True)


def test_auto_falls_back_to_numpy(monkeypatch):
    rng = np.random.default_rng(3)
    a = skewed_layer_counts(rng, 40, 200, mean_active=10, max_count=3)
    want = count_rules(a, engine="numpy")
    monkeypatch.setattr(native, "_LIB", None)  # as where the kernel was not built
    monkeypatch.setattr(native, "_WHY_NOT", "the native kernel sal/rules/_kernel was not built; rebuild it")
    with pytest.warns(RuntimeWarning, match="was not built; rebuild it.*numpy engine"):
        got = count_rules(a)
    pd.testing.assert_frame_equal(got, want, check_exact=True)
    with pytest.raises(ImportError, match="was not built; rebuild it"):
        count_rules(a, engine="native")


@needs_kernel
def test_auto_uses_the_kernel_within_budget_only(monkeypatch):
    rng = np.random.default_rng(4)
    a = skewed_layer_counts(rng, 40, 200, mean_active=10, max_count=3)
    calls = []
    original = native.count_rules_native
    monkeypatch.setattr(native, "count_rules_native", lambda *args, **kw: (calls.append(1), original(*args, **kw))[1])
    count_rules(a)
    assert calls == [1]
    count_rules(a, memory_budget_gb=1e-9)  # scratch does not fit: chunked engine
    assert calls == [1]


def test_unknown_engine_is_rejected():
    with pytest.raises(ValueError, match="engine"):
        count_rules(np.ones((2, 2), dtype=int), engine="gpu")


def test_missing_kernel_is_reported_with_the_fix(tmp_path):
    lib, why = native._load_kernel(tmp_path)
    assert lib is None and "was not built" in why and "make install" in why


def test_unloadable_kernel_is_reported(tmp_path):
    (tmp_path / f"_kernel{importlib.machinery.EXTENSION_SUFFIXES[0]}").write_bytes(b"not a shared object")
    lib, why = native._load_kernel(tmp_path)
    assert lib is None and "does not load" in why


@pytest.mark.skipif(shutil.which("cc") is None, reason="no C compiler")
def test_stale_kernel_is_refused(tmp_path):
    # a build from an older _kernel.c (other ABI number) must not run against today's structs
    source = tmp_path / "old.c"
    source.write_text(f"long long sal_kernel_abi(void) {{ return {native._KERNEL_ABI + 1}; }}\n")
    target = tmp_path / f"_kernel{importlib.machinery.EXTENSION_SUFFIXES[0]}"
    subprocess.run(["cc", "-shared", "-fPIC", "-o", str(target), str(source)], check=True)
    lib, why = native._load_kernel(tmp_path)
    assert lib is None and "stale" in why


def test_the_installed_kernel_loads():
    # `make install` builds it wherever a C compiler exists (CI included); a silent fallback to
    # the numpy engine would only show up as a slower benchmark.
    if shutil.which("cc") is None:
        pytest.skip("no C compiler: the package runs on its numpy engine")
    assert native.available(), native.unavailable_reason()
