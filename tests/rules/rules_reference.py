"""Brute-force rule counts written straight from the definitions (plain loops, tiny inputs)."""

from __future__ import annotations

import itertools

import numpy as np
import pandas as pd


def brute_force_rules(a, max_premises=2, beta=1.0, min_premise_count=1, min_rule_count=1, allowed=None):
    a = np.asarray(a)
    n_samples, n_features = a.shape
    feats = range(n_features) if allowed is None else sorted(set(int(x) for x in allowed))
    rows = []
    for p in feats:
        n_premise = sum(1 for n in range(n_samples) if a[n, p] > 0)
        for q in feats:
            if q == p:
                continue
            n_rule = sum(1 for n in range(n_samples) if a[n, p] > a[n, q] > 0)
            if n_rule >= min_rule_count and n_premise >= min_premise_count:
                rows.append((p, -1, q, n_premise, n_rule))
    if max_premises == 2:
        for p1, p2 in itertools.combinations(feats, 2):
            n_premise = sum(1 for n in range(n_samples) if a[n, p1] > 0 and a[n, p2] > 0)
            for q in feats:
                if q in (p1, p2):
                    continue
                n_rule = sum(1 for n in range(n_samples) if a[n, p1] > a[n, q] > 0 and a[n, p2] > a[n, q])
                if n_rule >= min_rule_count and n_premise >= min_premise_count:
                    rows.append((p1, p2, q, n_premise, n_rule))
    rows.sort()
    df = pd.DataFrame(rows, columns=["p1", "p2", "q", "n_premise", "n_rule"]).astype(np.int64)
    df["prob"] = (df["n_rule"] + beta) / (df["n_premise"] + 2 * beta)
    return df
