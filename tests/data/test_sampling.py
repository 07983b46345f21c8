"""sal.data.sampling against transformers: the same nucleus as TopPLogitsWarper, the same
greedy tokens as generate(), a seeded and correctly distributed draw."""

from __future__ import annotations

import pytest
import torch
from transformers.generation.logits_process import TopPLogitsWarper

from sal.data import sampling
from sal.data.sampling import next_tokens, nucleus, sample_batch


def reference_kept(logits_BV: torch.Tensor, top_p: float) -> list[set]:
    out = TopPLogitsWarper(top_p)(None, logits_BV.clone())
    return [set(torch.isfinite(row).nonzero().squeeze(1).tolist()) for row in out]


def ours_kept(logits_BV: torch.Tensor, top_p: float) -> list[set]:
    probs_BK, ids_BK = nucleus(logits_BV, top_p)
    return [set(ids[p > 0].tolist()) for p, ids in zip(probs_BK, ids_BK)]


@pytest.mark.parametrize("scale", [0.1, 1.0, 5.0, 30.0])  # from flat (full-sort fallback) to peaked
@pytest.mark.parametrize("top_p", [0.5, 0.9, 0.95])
def test_nucleus_is_transformers_top_p(monkeypatch, scale, top_p):
    monkeypatch.setattr(sampling, "NUCLEUS_CANDIDATES", 16)  # small, so both branches run
    g = torch.Generator().manual_seed(int(scale * 100 + top_p * 10))
    logits = torch.randn(12, 300, generator=g, dtype=torch.float64) * scale
    logits[3, ::2] = logits[3, 1::2]  # ties: which of a tied pair makes the cut is the sort's choice
    ours, ref = ours_kept(logits, top_p), reference_kept(logits, top_p)
    assert ours[:3] + ours[4:] == ref[:3] + ref[4:]
    assert len(ours[3]) == len(ref[3])
    probs, _ = nucleus(logits, top_p)
    assert torch.allclose(probs.sum(-1), torch.ones(12, dtype=probs.dtype))


def test_draws_follow_the_nucleus_distribution():
    logits = torch.tensor([[2.0, 1.5, 1.0, 0.0, -3.0, -3.0]])
    top_p, temperature, n = 0.9, 0.7, 40_000
    probs = (logits / temperature).softmax(-1)[0]
    order = probs.argsort(descending=True)
    kept = order[: int(((probs[order].cumsum(0) - probs[order]) < top_p).sum())]
    want = torch.zeros(6, dtype=torch.float64)
    want[kept] = probs[kept].double() / probs[kept].sum()
    g = torch.Generator().manual_seed(0)
    draws = next_tokens(logits.expand(n, -1), temperature, top_p, g)
    freq = torch.bincount(draws, minlength=6).double() / n
    assert torch.allclose(freq, want, atol=0.01)
    assert freq[5] == 0  # outside the nucleus: never drawn


def _prompts(tokenizer):
    head = "A conversation between User and Assistant. User: "
    return [head + q + " Assistant: <think>" for q in ("2+2?", "What is the area of a circle of radius 3?", "x")]


@pytest.mark.parametrize("prefill_rows", [16, 2])  # one prefill group, or groups of different widths
@pytest.mark.parametrize("shared_head", [True, False])
def test_greedy_matches_transformers_generate(tiny_model, monkeypatch, prefill_rows, shared_head):
    monkeypatch.setattr(sampling, "PREFILL_ROWS", prefill_rows)
    model, tok = tiny_model
    prompts = _prompts(tok) + ["A conversation between User and Assistant. User: 7*8 = ? Assistant: <think>"]
    if not shared_head:
        prompts.append("no head shared with the others")
    ids = [tok(p)["input_ids"] for p in prompts]
    ours = sample_batch(model, ids, 12, 0.0, 1.0, 0, [tok.eos_token_id], tok.pad_token_id)
    for p, got in zip(prompts, ours):
        enc = tok(p, return_tensors="pt")
        with torch.no_grad():
            ref = model.generate(**enc, max_new_tokens=12, do_sample=False, pad_token_id=tok.pad_token_id)
        ref_new = ref[0, enc["input_ids"].shape[1]:].tolist()
        if tok.eos_token_id in ref_new:
            ref_new = ref_new[:ref_new.index(tok.eos_token_id)]
        assert got == ref_new


def test_sampling_is_seeded_and_stops_at_eos(tiny_model):
    model, tok = tiny_model
    ids = [tok(p)["input_ids"] for p in _prompts(tok)]
    a = sample_batch(model, ids, 10, 0.8, 0.95, 7, [tok.eos_token_id], tok.pad_token_id)
    b = sample_batch(model, ids, 10, 0.8, 0.95, 7, [tok.eos_token_id], tok.pad_token_id)
    c = sample_batch(model, ids, 10, 0.8, 0.95, 8, [tok.eos_token_id], tok.pad_token_id)
    assert a == b and a != c and all(len(x) <= 10 for x in a)
    # Every token is an end-of-sequence token: nothing is generated.
    assert sample_batch(model, ids, 10, 0.8, 0.95, 7, list(range(model.config.vocab_size)), tok.pad_token_id) == \
        [[], [], []]


def test_per_row_caps_cut_each_row_at_its_own_budget(tiny_model):
    """Greedy rows capped at 0, 3 and 12 tokens are the uncapped rows' first 0, 3, 12 tokens
    (an EOS-free random model runs to every cap)."""
    model, tok = tiny_model
    ids = [tok(p)["input_ids"] for p in _prompts(tok)]
    full = sample_batch(model, ids, 12, 0.0, 1.0, 0, [tok.eos_token_id], tok.pad_token_id)
    capped = sample_batch(model, ids, [0, 3, 12], 0.0, 1.0, 0, [tok.eos_token_id], tok.pad_token_id)
    assert capped == [full[0][:0], full[1][:3], full[2][:12]]
    assert sample_batch(model, ids, [0, 0, 0], 0.8, 0.95, 0, [tok.eos_token_id], tok.pad_token_id) == [[], [], []]
    with pytest.raises(ValueError, match="2 caps for 3 prompts"):
        sample_batch(model, ids, [1, 2], 0.0, 1.0, 0, [tok.eos_token_id], tok.pad_token_id)
