"""Run the native kernel from a directory (a sanitizer build) against the numpy engine.

usage: python sanitized_kernel_script.py KERNEL_DIR   (exits non-zero on any mismatch)
"""

import sys
from pathlib import Path

import numpy as np
import pandas as pd

import sal.rules.native as native
from sal.rules import count_rules

lib, why = native._load_kernel(Path(sys.argv[1]))
assert lib is not None, why
native._LIB = lib

rng = np.random.default_rng(0)
for _ in range(40):
    n_features, n_samples = int(rng.integers(1, 90)), int(rng.integers(1, 30))
    a = rng.integers(1, 6, size=(n_samples, n_features)) * (rng.random((n_samples, n_features)) < rng.uniform(0.05, 0.9))
    kwargs = dict(max_premises=int(rng.integers(1, 3)), min_premise_count=int(rng.integers(1, 4)),
                  min_rule_count=int(rng.integers(1, 3)))
    pd.testing.assert_frame_equal(count_rules(a, engine="native", **kwargs), count_rules(a, engine="numpy", **kwargs))
# wide and skewed: several bitset summary words, popular premises in many samples, both threads
popularity = 1.0 / np.arange(1, 5001)
a = np.zeros((300, 5000), dtype=np.int64)
for row in a:
    cols = rng.choice(5000, size=int(rng.integers(1, 60)), replace=False, p=popularity / popularity.sum())
    row[cols] = rng.integers(1, 9, size=len(cols))
for kwargs in (dict(), dict(min_premise_count=3), dict(min_rule_count=2), dict(max_premises=1)):
    pd.testing.assert_frame_equal(count_rules(a, engine="native", **kwargs), count_rules(a, engine="numpy", **kwargs))
print("clean")
