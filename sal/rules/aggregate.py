"""Aggregate one sample's feature activations into its layer-count vector (Appendix D).

Input: ``feats_TLC`` = activations of the C crosscoder features at the L monitored layers for
the sample's T valid tokens (BOS/special tokens and padding already removed, so the last row
is the last non-padding token). An activation *fires* when it exceeds ``tau``.
Output: the sparse vector ``a`` [C] that the rule counter compares between features.

Modes (``rules.aggregate=``):

* ``last_token`` (default, the paper's text): ``a_c`` = number of layers where c fires at the
  last token. The paper reads activations at the last token because a model can read any
  earlier layer and token there; values lie in 0..L.
* ``any_token``: ``a_c`` = number of layers where c fires at *any* token of the sample (the
  whole trace); values lie in 0..L.
* ``algorithm1``: Algorithm 1 taken literally: sum the activations over layers, threshold the
  sum at ``tau``, and count the tokens where it fires. This yields **token counts** (0..T),
  not layer counts, so ties and magnitudes differ from the other two modes; kept for
  faithfulness to the pseudo-code.

Layer activity (``rules.layer_activity=``), for the two layer-count modes:

* ``encoder`` (default, the paper's text): c is active at layer l when its encoder fires there,
  ``h_c^l > tau``.
* ``cumulative``: c is active at layer l when it fired at some layer ``l' <= l``: the causal
  decoder writes a feature found at l' into the reconstruction of every later layer, and a
  crosscoder encodes a persisting direction once, where it emerges. ``a_c`` is then
  ``L - (first layer c fires)`` and ``a_p > a_q`` means p emerged before q.

The output is sparse (C = 32768, a few dozen active features) as ``SparseLayerCounts``;
``LayerCountBuilder`` / ``stack_layer_counts`` stack samples into a CSR matrix for
``count_rules``.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, NamedTuple

import numpy as np
import scipy.sparse as sp

from sal.config.choices import Aggregation, LayerActivity

AGGREGATIONS = tuple(a.value for a in Aggregation)
LAYER_ACTIVITIES = tuple(a.value for a in LayerActivity)


class SparseLayerCounts(NamedTuple):
    """One sample's non-zero layer counts."""

    indices: np.ndarray
    """int32 [k]: feature ids with a count > 0, ascending."""
    values: np.ndarray
    """int32 [k]: their counts (layers, or tokens for ``algorithm1``)."""


def _is_torch(x: Any) -> bool:
    return type(x).__module__.startswith("torch")


def check_aggregation(mode: str, layer_activity: str = "encoder") -> None:
    if mode not in AGGREGATIONS:
        raise ValueError(f"aggregate={mode!r}: unknown aggregation; choose one of {', '.join(AGGREGATIONS)}")
    if layer_activity not in LAYER_ACTIVITIES:
        raise ValueError(f"layer_activity={layer_activity!r}: choose one of {', '.join(LAYER_ACTIVITIES)}")
    if layer_activity == "cumulative" and mode == "algorithm1":
        raise ValueError("layer_activity='cumulative' needs per-layer atoms; algorithm1 sums over layers")


def _active_layers(fires: Any, layer_activity: str, layer_axis: int) -> Any:
    """The atoms along ``layer_axis``: as fired, or from the first firing layer on."""
    if layer_activity == "encoder":
        return fires
    if _is_torch(fires):
        return fires.cumsum(layer_axis) > 0
    return np.logical_or.accumulate(fires, axis=layer_axis)


def _counts_C(feats_TLC: Any, tau: float, mode: str, layer_activity: str = "encoder") -> Any:
    """Dense counts [C] (torch or numpy, same library and device as the input)."""
    if mode == "last_token":
        return _active_layers(feats_TLC[-1] > tau, layer_activity, layer_axis=0).sum(0)
    if mode == "any_token":
        return _active_layers(feats_TLC > tau, layer_activity, layer_axis=1).any(0).sum(0)
    # algorithm1: sum over layers -> [T, C] (in at least float32), threshold, count tokens
    if _is_torch(feats_TLC):
        import torch

        summed = feats_TLC.sum(1, dtype=torch.promote_types(feats_TLC.dtype, torch.float32))
    else:
        summed = feats_TLC.sum(1, dtype=np.result_type(feats_TLC.dtype, np.float32))
    return (summed > tau).sum(0)


def aggregate_sample(feats_TLC: Any, tau: float = 0.0, mode: str = "last_token",
                     layer_activity: str = "encoder") -> SparseLayerCounts:
    """Layer-count vector of one sample from its activations [T, L, C] (torch or numpy)."""
    check_aggregation(mode, layer_activity)
    if len(feats_TLC.shape) != 3:
        raise ValueError(
            f"feats_TLC: expected [tokens, layers, features], got shape {tuple(feats_TLC.shape)}; "
            "pass one sample at a time or use aggregate_batch"
        )
    n_features = feats_TLC.shape[2]
    if feats_TLC.shape[0] == 0 or feats_TLC.shape[1] == 0:
        return SparseLayerCounts(np.zeros(0, np.int32), np.zeros(0, np.int32))
    counts = _counts_C(feats_TLC, tau, mode, layer_activity)
    if _is_torch(counts):
        idx = counts.nonzero().flatten()
        values = counts[idx]
        idx, values = idx.cpu().numpy(), values.cpu().numpy()
    else:
        counts = np.asarray(counts)
        idx = np.flatnonzero(counts)
        values = counts[idx]
    assert idx.size == 0 or idx.max() < n_features
    return SparseLayerCounts(idx.astype(np.int32), values.astype(np.int32))


def aggregate_batch(feats_BTLC: Any, mask_BT: Any, tau: float = 0.0, mode: str = "last_token",
                    layer_activity: str = "encoder") -> list[SparseLayerCounts]:
    """Per-sample layer counts of a padded batch; ``mask_BT`` marks the valid tokens.

    The last valid token of each row plays the role of the last non-padding token.
    """
    check_aggregation(mode, layer_activity)
    if len(feats_BTLC.shape) != 4 or tuple(mask_BT.shape) != tuple(feats_BTLC.shape[:2]):
        raise ValueError(
            f"feats_BTLC {tuple(feats_BTLC.shape)} and mask_BT {tuple(mask_BT.shape)}: expected "
            "[batch, tokens, layers, features] activations and a [batch, tokens] validity mask"
        )
    out = []
    for b in range(feats_BTLC.shape[0]):
        mask = mask_BT[b]
        mask = mask.bool() if _is_torch(mask) else np.asarray(mask, dtype=bool)
        out.append(aggregate_sample(feats_BTLC[b][mask], tau=tau, mode=mode, layer_activity=layer_activity))
    return out


class LayerCountBuilder:
    """Collects ``SparseLayerCounts`` rows and builds the CSR matrix [n_samples, C]."""

    def __init__(self, n_features: int, dtype: Any = np.int32):
        self.n_features = n_features
        self.dtype = np.dtype(dtype)
        self._indices: list[np.ndarray] = []
        self._values: list[np.ndarray] = []

    def __len__(self) -> int:
        return len(self._indices)

    def add(self, row: SparseLayerCounts) -> None:
        idx = np.asarray(row.indices, dtype=np.int32)
        if idx.size and (idx.min() < 0 or idx.max() >= self.n_features):
            raise ValueError(
                f"feature ids must lie in [0, {self.n_features}); got [{idx.min()}, {idx.max()}]: "
                "the builder's n_features must match the crosscoder's dictionary size"
            )
        self._indices.append(idx)
        self._values.append(np.asarray(row.values))

    def to_csr(self) -> sp.csr_matrix:
        lengths = np.array([len(i) for i in self._indices], dtype=np.int64)
        indptr = np.r_[0, np.cumsum(lengths)].astype(np.int64)
        indices = np.concatenate(self._indices) if self._indices else np.zeros(0, np.int32)
        values = np.concatenate(self._values) if self._values else np.zeros(0, self.dtype)
        mat = sp.csr_matrix((values.astype(self.dtype), indices, indptr), shape=(len(lengths), self.n_features))
        mat.sum_duplicates()  # canonical (sorted) even if rows came unsorted
        mat.eliminate_zeros()
        return mat


def stack_layer_counts(rows: Iterable[SparseLayerCounts], n_features: int, dtype: Any = np.int32) -> sp.csr_matrix:
    """CSR [n_samples, C] of layer counts from per-sample sparse rows."""
    builder = LayerCountBuilder(n_features, dtype)
    for row in rows:
        builder.add(row)
    return builder.to_csr()
