"""Aggregation of activations [tokens, layers, features] into layer counts, hand-checked."""

import numpy as np
import pytest
import torch

from sal.rules import LayerCountBuilder, SparseLayerCounts, aggregate_batch, aggregate_sample, stack_layer_counts


def tiny_feats_TLC():
    """3 tokens, 2 layers, 4 features."""
    f = np.zeros((3, 2, 4), dtype=np.float32)
    f[0, 0, 0] = 1.0  # feature 0 fires at token 0, layer 0 only
    f[1, 1, 1] = 0.3  # feature 1 fires at token 1 layer 1 (below tau=0.5 with tau)
    f[2, 0, 2] = 2.0  # feature 2 fires at the last token, both layers
    f[2, 1, 2] = 1.0
    f[0, 0, 3] = 0.4  # feature 3: 0.4 + 0.4 at token 0 -> sum 0.8 across layers
    f[0, 1, 3] = 0.4
    f[2, 1, 3] = 0.6  # and fires at the last token, layer 1
    return f


def as_dense(row: SparseLayerCounts, n_features=4):
    out = np.zeros(n_features, dtype=int)
    out[row.indices] = row.values
    return out.tolist()


@pytest.mark.parametrize("backend", ["numpy", "torch"])
def test_modes_hand_checked(backend):
    f = tiny_feats_TLC()
    if backend == "torch":
        f = torch.from_numpy(f)
    # last token: layers firing at token 2 (> 0)
    assert as_dense(aggregate_sample(f, 0.0, "last_token")) == [0, 0, 2, 1]
    # any token: layers where the feature fires at some token
    assert as_dense(aggregate_sample(f, 0.0, "any_token")) == [1, 1, 2, 2]
    # algorithm1: tokens where the layer-summed activation > tau (token counts)
    assert as_dense(aggregate_sample(f, 0.0, "algorithm1")) == [1, 1, 1, 2]
    # tau = 0.5: strict threshold on single activations; algorithm1 thresholds the layer sums
    assert as_dense(aggregate_sample(f, 0.5, "last_token")) == [0, 0, 2, 1]
    assert as_dense(aggregate_sample(f, 0.5, "any_token")) == [1, 0, 2, 1]
    assert as_dense(aggregate_sample(f, 0.5, "algorithm1")) == [1, 0, 1, 2]
    assert as_dense(aggregate_sample(f, 1.0, "last_token")) == [0, 0, 1, 0]  # 1.0 is not > 1.0


def test_output_is_sparse_sorted_int32():
    row = aggregate_sample(tiny_feats_TLC(), 0.0, "any_token")
    assert row.indices.dtype == np.int32 and row.values.dtype == np.int32
    assert row.indices.tolist() == [0, 1, 2, 3]
    row = aggregate_sample(tiny_feats_TLC(), 0.0, "last_token")
    assert row.indices.tolist() == [2, 3] and row.values.tolist() == [2, 1]


def test_batch_uses_last_valid_token():
    f = tiny_feats_TLC()
    padded = np.zeros((2, 4, 2, 4), dtype=np.float32)
    padded[0, :3] = f  # sample 0: 3 valid tokens then padding
    padded[1, 1:4] = f  # sample 1: a masked first token (e.g. BOS), then the 3 tokens
    padded[1, 0, :, :] = 9.0  # the masked token would fire everywhere
    mask = np.array([[1, 1, 1, 0], [0, 1, 1, 1]], dtype=bool)
    rows = aggregate_batch(padded, mask, 0.0, "last_token")
    assert [as_dense(r) for r in rows] == [[0, 0, 2, 1], [0, 0, 2, 1]]
    rows = aggregate_batch(torch.from_numpy(padded), torch.from_numpy(mask), 0.0, "any_token")
    assert [as_dense(r) for r in rows] == [[1, 1, 2, 2], [1, 1, 2, 2]]


def test_stack_into_csr():
    rows = [SparseLayerCounts(np.array([3, 1], np.int32), np.array([2, 5], np.int32)), SparseLayerCounts(np.zeros(0, np.int32), np.zeros(0, np.int32))]
    mat = stack_layer_counts(rows, n_features=4)
    assert mat.shape == (2, 4)
    assert mat.toarray().tolist() == [[0, 5, 0, 2], [0, 0, 0, 0]]
    assert mat.has_sorted_indices
    builder = LayerCountBuilder(4)
    with pytest.raises(ValueError, match="n_features"):
        builder.add(SparseLayerCounts(np.array([4], np.int32), np.array([1], np.int32)))


def test_bad_mode_and_shape():
    with pytest.raises(ValueError, match="aggregate="):
        aggregate_sample(tiny_feats_TLC(), 0.0, "mean")
    with pytest.raises(ValueError, match="tokens, layers, features"):
        aggregate_sample(np.zeros((2, 3)), 0.0)
    assert as_dense(aggregate_sample(np.zeros((0, 2, 4)), 0.0)) == [0, 0, 0, 0]


def emergence_feats_TLC():
    """2 tokens, 4 layers, 4 features, each encoded once, where it emerges (the causal crosscoder's case)."""
    f = np.zeros((2, 4, 4), dtype=np.float32)
    f[1, 0, 0] = 1.0  # feature 0: from the embeddings (layer 0) at the last token
    f[1, 2, 1] = 1.0  # feature 1: emerges at layer 2 at the last token
    f[1, 1, 2] = 0.3  # feature 2: layer 1, and again at layer 3 (re-encoded)
    f[1, 3, 2] = 2.0
    f[0, 3, 3] = 1.0  # feature 3: only at the first token, top layer
    return f


@pytest.mark.parametrize("backend", ["numpy", "torch"])
def test_cumulative_layer_activity_counts_from_the_first_firing_layer(backend):
    f = emergence_feats_TLC()
    if backend == "torch":
        f = torch.from_numpy(f)
    # encoder atoms: every feature fires at one or two layers, so no premise outranks a conclusion
    assert as_dense(aggregate_sample(f, 0.0, "last_token")) == [1, 1, 2, 0]
    # cumulative: L - first firing layer (4 - 0, 4 - 2, 4 - 1): feature 0 emerged before 1 and 2
    assert as_dense(aggregate_sample(f, 0.0, "last_token", "cumulative")) == [4, 2, 3, 0]
    assert as_dense(aggregate_sample(f, 0.5, "last_token", "cumulative")) == [4, 2, 1, 0]  # 0.3 is below tau
    assert as_dense(aggregate_sample(f, 0.0, "any_token", "cumulative")) == [4, 2, 3, 1]
    rows = aggregate_batch(f[None], np.ones((1, 2), dtype=bool) if backend == "numpy" else torch.ones(1, 2, dtype=torch.bool),
                           0.0, "last_token", "cumulative")
    assert as_dense(rows[0]) == [4, 2, 3, 0]


def test_cumulative_counts_equal_layers_minus_first_firing_layer_on_random_activations():
    rng = np.random.default_rng(0)
    f = rng.random((5, 6, 30)).astype(np.float32) * (rng.random((5, 6, 30)) < 0.2)
    got = np.zeros(30, int)
    row = aggregate_sample(f, 0.1, "last_token", "cumulative")
    got[row.indices] = row.values
    fires = f[-1] > 0.1  # [L, C]
    expected = np.where(fires.any(0), 6 - fires.argmax(0), 0)
    assert got.tolist() == expected.tolist() and expected.max() > 0


def test_cumulative_layer_activity_is_refused_with_algorithm1():
    with pytest.raises(ValueError, match="per-layer atoms"):
        aggregate_sample(emergence_feats_TLC(), 0.0, "algorithm1", "cumulative")
    with pytest.raises(ValueError, match="layer_activity="):
        aggregate_sample(emergence_feats_TLC(), 0.0, "last_token", "first")
