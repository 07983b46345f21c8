"""sal.top_spans: streaming per-feature counts and top-k spans."""

from __future__ import annotations

import math

import pytest
import torch
from list_tokenizer import ListTokenizer

from sal.top_spans import TopSpanCollector


def brute_force(batches, n_features, k, tau):
    counts = [0] * n_features
    in_docs = [set() for _ in range(n_features)]
    seen = [[] for _ in range(n_features)]
    for feats, ids, mask, docs in batches:
        B, T, C = feats.shape
        for b in range(B):
            for t in range(T):
                for c in range(C):
                    v = float(feats[b, t, c])
                    if mask[b, t] and v > tau:
                        counts[c] += 1
                        in_docs[c].add(int(docs[b]))
                        seen[c].append((v, int(docs[b]), t))
    tops = [sorted(s, reverse=True)[:k] for s in seen]
    return counts, tops, [len(d) for d in in_docs]


def random_batches(n_batches=4, B=3, T=6, C=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    out = []
    for n in range(n_batches):
        feats = torch.relu(torch.randn(B, T, C, generator=g))
        ids = torch.randint(1, 10, (B, T), generator=g)
        mask = torch.ones(B, T, dtype=torch.bool)
        mask[0, -2:] = False  # right padding
        mask[:, 0] = False  # BOS
        out.append((feats, ids, mask, [n * B + b for b in range(B)]))
    return out


@pytest.mark.parametrize("k, chunk", [(1, None), (4, 5), (40, 1)])
def test_collector_matches_brute_force(k, chunk):
    batches = random_batches()
    col = TopSpanCollector(5, k=k, window=3, tau=0.2)
    for b in batches:
        col.update(*b, chunk_tokens=chunk)
    counts, tops, doc_counts = brute_force(batches, 5, k, 0.2)
    assert col.counts_C.tolist() == counts
    assert col.doc_counts_C.tolist() == doc_counts and col.n_docs == sum(len(d) for *_, d in batches)
    assert doc_counts != counts  # the batches do fire features several times per document
    for c in range(5):
        got = [(a, d, p) for a, d, p in zip(col.top_act_CK[c].tolist(), col.top_doc_CK[c].tolist(),
                                            col.top_pos_CK[c].tolist()) if not math.isinf(a)]
        assert [(d, p) for _, d, p in got] == [(d, p) for _, d, p in tops[c]]
        assert [a for a, _, _ in got] == pytest.approx([a for a, _, _ in tops[c]])
    assert col.n_tokens == sum(int(m.sum()) for _, _, m, _ in batches)


def test_collector_merge_and_save_equal_single_pass(tmp_path):
    batches = random_batches(seed=1)
    whole = TopSpanCollector(5, k=4, window=3, store_tokens=True)
    left = TopSpanCollector(5, k=4, window=3, store_tokens=True)
    right = TopSpanCollector(5, k=4, window=3, store_tokens=True)
    for i, b in enumerate(batches):
        whole.update(*b)
        (left if i % 2 else right).update(*b)
    left.merge(right)
    left.save(tmp_path / "c.safetensors")
    loaded = TopSpanCollector.load(tmp_path / "c.safetensors")
    for name in ("counts_C", "doc_counts_C", "top_act_CK", "top_doc_CK", "top_pos_CK"):
        assert torch.equal(getattr(loaded, name), getattr(whole, name)), name
    assert loaded.doc_tokens == whole.doc_tokens and loaded.n_tokens == whole.n_tokens
    assert loaded.n_docs == whole.n_docs == 12


def test_spans_end_at_activating_token():
    tok = ListTokenizer()
    # doc 7: "<s> a b = x 1 <pad>"; feature 0 fires on " =" (pos 3) and " 1" (pos 5).
    ids = torch.tensor([[0, 1, 2, 3, 4, 5, 9]])
    mask = torch.tensor([[True, True, True, True, True, True, False]])
    feats = torch.zeros(1, 7, 2)
    feats[0, 3, 0], feats[0, 5, 0] = 2.0, 3.0
    feats[0, 6, 1] = 9.0  # on padding: must be ignored
    col = TopSpanCollector(2, k=3, window=3, store_tokens=True)
    col.update(feats, ids, mask, [7])
    spans = col.spans(tok)
    assert [(s.text, s.tokens[-1], s.activation, s.doc, s.position) for s in spans[0]] == [
        (" = x 1", " 1", 3.0, 7, 5), (" a b =", " =", 2.0, 7, 3)]
    assert spans[1] == [] and col.counts_C.tolist() == [2, 0]
    # Window reaching the document start drops the special token.
    col2 = TopSpanCollector(1, k=1, window=5)
    col2.update(feats[..., :1] * 0 + (torch.arange(7) == 2).float()[None, :, None], ids, mask, [0])
    assert col2.spans(tok, tokens_by_doc={0: ids[0].tolist()})[0][0].text == " a b"


def random_layered_batches(n_batches=3, B=3, T=6, L=4, C=5, seed=2):
    """[B, T, L, C] activations, sparse enough that a feature fires in some layers only."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for feats, ids, mask, docs in random_batches(n_batches, B, T, C, seed):
        out.append((torch.relu(torch.randn(B, T, L, C, generator=g)), ids, mask, docs))
    return out


@pytest.mark.parametrize("chunk", [None, 4])
def test_collector_keeps_the_layers_each_top_entry_fires_in(chunk, tmp_path):
    batches, tau, k, names = random_layered_batches(), 0.3, 6, [2, 5, 9, 11]
    col = TopSpanCollector(5, k=k, window=3, tau=tau, layers=names)
    reduced = TopSpanCollector(5, k=k, window=3, tau=tau)  # the old call: already reduced over the layers
    for feats, ids, mask, docs in batches:
        col.update(feats, ids, mask, docs, chunk_tokens=chunk)
        reduced.update(feats.amax(dim=2), ids, mask, docs, chunk_tokens=chunk)
    for name in ("counts_C", "doc_counts_C", "top_act_CK", "top_doc_CK", "top_pos_CK"):
        assert torch.equal(getattr(col, name), getattr(reduced, name)), name  # bit-identical
    assert (reduced.top_layers_CK == 0).all()
    # Brute force: every (doc, position) -> the layers above tau, per feature.
    fired = {}
    for feats, _, mask, docs in batches:
        for b, t, c in torch.nonzero(feats.amax(dim=2) > tau).tolist():
            if mask[b, t]:
                fired[c, docs[b], t] = [names[l] for l in range(feats.shape[2]) if feats[b, t, l, c] > tau]
    layers = col.fired_layers()
    for c in range(5):
        kept = [(d, p) for a, d, p in zip(col.top_act_CK[c].tolist(), col.top_doc_CK[c].tolist(),
                                          col.top_pos_CK[c].tolist()) if not math.isinf(a)]
        assert kept and layers[c] == [fired[c, d, p] for d, p in kept]
    assert any(0 < len(ls) < 4 for c in range(5) for ls in layers[c])  # some entries fire in a few layers only
    assert reduced.fired_layers()[0] == [None] * len(layers[0])
    # Merging and saving keep the masks (split update = single pass).
    left, right = (TopSpanCollector(5, k=k, window=3, tau=tau, layers=names) for _ in range(2))
    for i, b in enumerate(batches):
        (left if i % 2 else right).update(*b)
    left.merge(right).save(tmp_path / "c.safetensors")
    loaded = TopSpanCollector.load(tmp_path / "c.safetensors")
    assert torch.equal(loaded.top_layers_CK, col.top_layers_CK) and loaded.layers == names


def test_collector_rejects_more_layers_than_a_bitmask_holds():
    with pytest.raises(ValueError, match="at most 63"):
        TopSpanCollector(2).update(torch.zeros(1, 2, 64, 2), torch.zeros(1, 2), torch.ones(1, 2), [0])
    with pytest.raises(ValueError, match="1 to 63 layers"):
        TopSpanCollector(2, layers=range(64))
    with pytest.raises(ValueError, match="built for layers"):
        TopSpanCollector(2, layers=[1, 2]).update(torch.zeros(1, 2, 3, 2), torch.zeros(1, 2), torch.ones(1, 2), [0])
