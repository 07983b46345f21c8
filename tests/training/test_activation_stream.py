import itertools

import pytest
import torch
from _train_tiny import tiny_llama, tiny_texts

from sal.activations import residual_stream, special_token_ids
from sal.config.crosscoder import OptimConfig
from sal.training import cache as cache_mod
from sal.training import stream as stream_mod
from sal.training.stream import ActivationStream, ShuffleBuffer

LAYERS = [0, 2, 4]


@pytest.fixture(scope="module")
def subject():
    model, tok = tiny_llama()
    texts = [t[: 12 + 3 * i] for i, t in enumerate(tiny_texts(24))]  # 12..81 bytes: padding happens
    # Reference: each document alone (no padding), with its doc id; kept positions are the
    # non-special tokens after the first (the attention-sink position is never trained on).
    special = special_token_ids(tok)
    rows, doc_of_row = [], []
    for i, t in enumerate(texts):
        ids = torch.tensor([tok(t)["input_ids"][:48]])
        keep = torch.tensor([pos > 0 and x not in special for pos, x in enumerate(ids[0].tolist())])
        acts = residual_stream(model, ids, torch.ones_like(ids), LAYERS)[0][keep]
        rows.append(acts)
        doc_of_row += [i] * acts.shape[0]
    return model, tok, texts, torch.cat(rows), torch.tensor(doc_of_row)


def _match(rows_NLD, ref_NLD, tol=1e-4):
    """Index of the reference row each row equals (within float tolerance of padding)."""
    d = torch.cdist(rows_NLD.flatten(1).double(), ref_NLD.flatten(1).double())
    best = d.min(dim=1)
    assert (best.values < tol).all(), f"{int((best.values >= tol).sum())} rows match no valid reference token"
    return best.indices


def _stream(model, tok, texts, **kw):
    args = dict(batch_tokens=64, shuffle_buffer_tokens=256, max_tokens_per_instance=48, docs_per_forward=4,
                seed=0, epochs=1)
    args.update(kw)
    return ActivationStream(model, tok, texts, LAYERS, **args)


def test_shuffle_buffer_emits_each_token_once_in_mixed_order():
    gen = torch.Generator().manual_seed(0)
    buf = ShuffleBuffer(capacity=40, batch_tokens=8, generator=gen)
    out = []
    for start in range(0, 100, 10):
        ids = torch.arange(start, start + 10, dtype=torch.float32)[:, None, None]
        out += [b.flatten() for b in buf.push(ids)]
    out += [b.flatten() for b in buf.flush()]
    assert all(b.numel() == 8 for b in out)
    flat = torch.cat(out).long()
    assert flat.unique().numel() == flat.numel() == 96  # 100 tokens, remainder 4 < batch dropped
    assert not torch.equal(flat, flat.sort().values)  # shuffled


def test_stream_yields_fixed_size_batches_of_valid_tokens_mixed_across_documents(subject):
    model, tok, texts, ref, doc_of_row = subject
    batches = list(_stream(model, tok, texts))
    assert all(b.shape == (64, len(LAYERS), 32) for b in batches)
    rows = torch.cat(batches)
    idx = _match(rows, ref)
    assert idx.unique().numel() == idx.numel()  # no token twice
    assert rows.shape[0] == ref.shape[0] - ref.shape[0] % 64  # every valid token but the last partial batch
    assert doc_of_row[_match(batches[0], ref)].unique().numel() >= 3  # one batch mixes documents


def test_ranks_see_disjoint_documents(subject, monkeypatch):
    model, tok, texts, ref, doc_of_row = subject
    stream = _stream(model, tok, texts)
    orders = [stream.document_order(0, r, 2) for r in range(2)]
    assert set(orders[0]).isdisjoint(orders[1]) and set(orders[0]) | set(orders[1]) == set(range(len(texts)))
    monkeypatch.setattr(stream_mod, "rank_and_world", lambda: (1, 2))
    rows = torch.cat(list(stream))
    assert set(doc_of_row[_match(rows, ref)].tolist()) <= set(orders[1])


def _batches(stream, n):
    return list(itertools.islice(iter(stream), n))


@pytest.mark.parametrize("docs_per_forward, sort_window", [(4, 8), (1, 1)])
def test_a_resumed_stream_yields_exactly_what_the_uninterrupted_one_yields_next(subject, docs_per_forward,
                                                                                 sort_window):
    """Resume after k batches (a checkpoint): the same batches, bit for bit, in the same order
    as an uninterrupted stream after its k-th, across epochs, whatever the shuffle buffer held
    (a kill -9 mid-training then reproduces the uninterrupted run's weights)."""
    model, tok, texts, _, _ = subject
    kw = dict(docs_per_forward=docs_per_forward, sort_window=sort_window, epochs=None)
    full = _batches(_stream(model, tok, texts, **kw), 40)  # several epochs of 24 short documents
    for k in (1, 3, 7, 17, 33):
        resumed = _batches(_stream(model, tok, texts, start_tokens=64 * k, **kw), 40 - k)
        assert len(resumed) == 40 - k and all(torch.equal(a, b) for a, b in zip(full[k:], resumed)), k

    def forwards(k, n):
        calls = []
        counted = lambda m, *a: calls.append(1) or residual_stream(m, *a)  # noqa: E731
        _batches(_stream(model, tok, texts, start_tokens=64 * k, capture_fn=counted, **kw), n)
        return len(calls)

    # The subject model runs again only for the documents still in the buffer, not the whole prefix.
    assert forwards(33, 1) < forwards(0, 34) / 2
    with pytest.raises(ValueError, match="whole number"):
        next(iter(_stream(model, tok, texts, start_tokens=65)))


def test_a_resumed_finite_stream_ends_where_the_uninterrupted_one_ends(subject):
    model, tok, texts, _, _ = subject
    full = list(_stream(model, tok, texts, epochs=2))
    for k in (2, len(full) - 1, len(full), len(full) + 3):
        resumed = list(_stream(model, tok, texts, epochs=2, start_tokens=64 * k))
        assert len(resumed) == max(0, len(full) - k) and all(torch.equal(a, b) for a, b in zip(full[k:], resumed))


def test_a_resumed_cache_stream_yields_exactly_what_the_uninterrupted_one_yields_next(subject, tmp_path):
    model, tok, texts, _, _ = subject
    optim = OptimConfig(max_tokens_per_instance=48, docs_per_forward=4, cache_dtype="float32", cache_shard_tokens=300,
                        batch_instances=1, tokens_per_instance=64, shuffle_buffer_tokens=256)
    d = cache_mod.ensure_activation_cache(tmp_path, model, tok, texts, LAYERS, optim, model_name="tiny")
    full = _batches(cache_mod.CachedActivationStream(d, 32, 128), 60)
    for k in (1, 5, 23, 41):
        resumed = _batches(cache_mod.CachedActivationStream(d, 32, 128, start_tokens=32 * k), 60 - k)
        assert all(torch.equal(a, b) for a, b in zip(full[k:], resumed)), k


def test_activation_cache_is_written_once_and_read_back(subject, tmp_path, monkeypatch):
    model, tok, texts, ref, _ = subject
    optim = OptimConfig(max_tokens_per_instance=48, docs_per_forward=4, cache_dtype="float32", cache_shard_tokens=300,
                        batch_instances=1, tokens_per_instance=64, shuffle_buffer_tokens=256)
    d1 = cache_mod.ensure_activation_cache(tmp_path, model, tok, texts, LAYERS, optim, model_name="tiny")
    shards = sorted(d1.glob("shard_*.safetensors"))
    assert len(shards) >= 2 and (d1 / "index.json").exists()
    stamp = shards[0].stat().st_mtime_ns
    d2 = cache_mod.ensure_activation_cache(tmp_path, model, tok, texts, LAYERS, optim, model_name="tiny")
    assert d2 == d1 and shards[0].stat().st_mtime_ns == stamp  # a sweep's second job reuses it
    d3 = cache_mod.ensure_activation_cache(tmp_path, model, tok, texts[:-1], LAYERS, optim, model_name="tiny")
    assert d3 != d1  # another corpus, another cache

    full = torch.cat(list(cache_mod.CachedActivationStream(d1, 64, 256, epochs=1)))
    idx = _match(full, ref)
    assert idx.unique().numel() == idx.numel() == ref.shape[0] - ref.shape[0] % 64
    halves = []
    for rank in range(2):
        monkeypatch.setattr(stream_mod, "rank_and_world", lambda r=rank: (r, 2))
        halves.append(_match(torch.cat(list(cache_mod.CachedActivationStream(d1, 32, 128, epochs=1))), ref))
    assert set(halves[0].tolist()).isdisjoint(halves[1].tolist())
    assert len(set(halves[0].tolist()) | set(halves[1].tolist())) >= ref.shape[0] - 2 * 32


@pytest.mark.parametrize("max_seq_len", [48, 64])  # 64: the cache (48) lacks some positions
def test_feature_pass_reads_the_training_cache_instead_of_the_model(subject, tmp_path, max_seq_len):
    from sal.crosscoder import Crosscoder
    from sal.features import feature_pass

    model, tok, texts, _, _ = subject
    optim = OptimConfig(max_tokens_per_instance=48, docs_per_forward=4, cache_dtype="float32", cache_shard_tokens=300,
                        batch_instances=1, tokens_per_instance=64, shuffle_buffer_tokens=256)
    cache_mod.ensure_activation_cache(tmp_path, model, tok, texts, LAYERS, optim, model_name="tiny")
    cached = cache_mod.cached_token_activations(tmp_path, model, tok, texts, LAYERS, optim, model_name="tiny")
    assert cached is not None and len(cached) == len(texts)
    torch.manual_seed(0)
    cc = Crosscoder(d_model=32, n_layers=len(LAYERS), n_features=16)
    calls = []
    hook = model.model.layers[0].register_forward_hook(lambda *a: calls.append(1))
    try:
        fresh = list(feature_pass(model, tok, cc, texts, LAYERS, max_seq_len, batch_docs=5))
        n_fresh = len(calls)
        reused = list(feature_pass(model, tok, cc, texts, LAYERS, max_seq_len, batch_docs=5, cached=cached))
    finally:
        hook.remove()
    n_long = sum(len(tok(t)["input_ids"]) > 48 for t in texts)
    # Every batch without a document longer than the cache's 48 tokens skipped the model.
    assert len(calls) - n_fresh == (0 if max_seq_len == 48 or n_long == 0 else
                                    len({i // 5 for i, t in enumerate(texts) if len(tok(t)["input_ids"]) > 48}))
    for a, b in zip(fresh, reused):
        assert torch.equal(a.mask_BT, b.mask_BT) and torch.equal(a.token_ids_BT, b.token_ids_BT)
        assert torch.allclose(a.feats_BTLC, b.feats_BTLC, atol=1e-4)
    # A bf16 cache would round a float32 model's activations: not reused.
    bf16 = OptimConfig(**{**optim.__dict__, "cache_dtype": "bfloat16"})
    cache_mod.ensure_activation_cache(tmp_path, model, tok, texts, LAYERS, bf16, model_name="tiny")
    assert cache_mod.cached_token_activations(tmp_path, model, tok, texts, LAYERS, bf16, model_name="tiny") is None
