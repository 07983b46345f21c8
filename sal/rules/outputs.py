"""Outputs of rule extraction: ``rules.parquet``, ``feature_counts.parquet`` and a summary."""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from sal import atomic

from sal.rules._csr import as_layer_count_csr

RULES_FILE = "rules.parquet"
FEATURE_COUNTS_FILE = "feature_counts.parquet"
AGGREGATION_FILE = "aggregation.json"


def probability_histogram(prob: np.ndarray, n_bins: int = 10) -> pd.DataFrame:
    """Counts of rule probabilities in ``n_bins`` equal bins over [0, 1] (last bin closed)."""
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    counts, _ = np.histogram(np.asarray(prob, dtype=np.float64), bins=edges)
    return pd.DataFrame({"lo": edges[:-1], "hi": edges[1:], "n_rules": counts})


def summarize_rules(rules: pd.DataFrame, n_bins: int = 10) -> str:
    """Printable summary: rules by arity and the probability histogram."""
    one = int((rules["p2"].to_numpy() == -1).sum())
    two = len(rules) - one
    lines = [
        f"rules: {len(rules):,}  (1 premise: {one:,}; 2 premises: {two:,})",
        "probability histogram:",
        f"  {'bin':>13}  {'rules':>14}  {'share':>7}",
    ]
    hist = probability_histogram(rules["prob"].to_numpy(), n_bins)
    total = max(len(rules), 1)
    for i, row in hist.iterrows():
        right = "]" if i == len(hist) - 1 else ")"
        lines.append(f"  [{row.lo:.2f}, {row.hi:.2f}{right}  {int(row.n_rules):>14,}  {row.n_rules / total:>7.1%}")
    return "\n".join(lines)


def feature_counts_table(layer_counts: Any) -> pd.DataFrame:
    """Per feature: samples where it is active and its mean layer count over those samples."""
    mat = as_layer_count_csr(layer_counts)
    n_features = mat.shape[1]
    n_active = np.bincount(mat.indices, minlength=n_features)
    total = np.bincount(mat.indices, weights=mat.data, minlength=n_features)
    mean = np.divide(total, n_active, out=np.zeros(n_features), where=n_active > 0)
    return pd.DataFrame(
        {
            "feature": np.arange(n_features, dtype=np.int32),
            "n_samples_active": n_active.astype(np.int64),
            "mean_layer_count": mean,  # over the samples where the feature is active; 0 if never
        }
    )


def _write_parquet_atomic(df: pd.DataFrame, path: str, row_group_size: int = 1 << 22) -> None:
    table = pa.Table.from_pandas(df, preserve_index=False)
    with atomic.atomic_path(path) as tmp:
        pq.write_table(table, tmp, row_group_size=row_group_size)


def write_rules_outputs(out_dir: str, rules: pd.DataFrame, layer_counts: Any, config: Any = None) -> dict[str, str]:
    """Write ``rules.parquet``, ``feature_counts.parquet`` (and ``aggregation.json`` from
    ``config``, a dataclass or dict) into ``out_dir``; returns the paths by name."""
    os.makedirs(out_dir, exist_ok=True)
    paths = {"rules": os.path.join(out_dir, RULES_FILE), "feature_counts": os.path.join(out_dir, FEATURE_COUNTS_FILE)}
    _write_parquet_atomic(feature_counts_table(layer_counts), paths["feature_counts"])
    if config is not None:
        payload = dataclasses.asdict(config) if dataclasses.is_dataclass(config) else dict(config)
        paths["aggregation"] = os.path.join(out_dir, AGGREGATION_FILE)
        atomic.write_json(paths["aggregation"], payload, sort_keys=True)
    _write_parquet_atomic(rules, paths["rules"])  # last: evaluate.py takes it for "rules done"
    return paths
