import pytest
import torch

from sal.activations import (decoder_blocks, forward_batches, residual_stream, special_token_ids, valid_activations,
                             valid_token_mask)


def _batch(tokenizer):
    tokenizer.padding_side = "right"
    return tokenizer(["What is 2 + 2?", "Let x = 3. Then 2x = 6."], return_tensors="pt", padding=True)


def test_matches_output_hidden_states_exactly_at_block_inputs(tiny_model):
    model, tok = tiny_model
    enc = _batch(tok)
    n = model.config.num_hidden_layers
    with torch.no_grad():
        ref = model(**enc, output_hidden_states=True).hidden_states
    layers = list(range(n))
    acts = residual_stream(model, enc.input_ids, enc.attention_mask, layers)
    assert acts.shape == (2, enc.input_ids.shape[1], n, model.config.hidden_size)
    for j, i in enumerate(layers):
        assert torch.equal(acts[:, :, j], ref[i])


def test_last_point_is_last_block_output_before_final_norm(tiny_model):
    model, tok = tiny_model
    enc = _batch(tok)
    n = model.config.num_hidden_layers
    with torch.no_grad():
        ref = model(**enc, output_hidden_states=True).hidden_states
    out = residual_stream(model, enc.input_ids, enc.attention_mask, [n])[:, :, 0]
    # HF's last hidden state is normed; ours is not, and the final norm maps ours onto it.
    assert not torch.allclose(out, ref[n])
    assert torch.allclose(model.model.norm(out), ref[n], atol=1e-6)


def test_later_blocks_and_lm_head_never_run(tiny_model):
    model, tok = tiny_model
    enc = _batch(tok)
    ran = []
    hooks = [b.register_forward_hook(lambda m, a, o, i=i: ran.append(i)) for i, b in enumerate(decoder_blocks(model))]
    hooks.append(model.lm_head.register_forward_hook(lambda *a: ran.append("lm_head")))
    hooks.append(model.model.norm.register_forward_hook(lambda *a: ran.append("norm")))
    try:
        residual_stream(model, enc.input_ids, enc.attention_mask, [0, 2, 3])
        assert ran == [0, 1, 2]  # block 3's input is block 2's output: block 3 never runs
        ran.clear()
        residual_stream(model, enc.input_ids, enc.attention_mask, [0, model.config.num_hidden_layers])
        assert ran == list(range(model.config.num_hidden_layers))  # no final norm, no head
    finally:
        for h in hooks:
            h.remove()


def test_hooks_are_removed_after_capture(tiny_model):
    model, tok = tiny_model
    enc = _batch(tok)
    def n_hooks():
        return [(len(b._forward_pre_hooks), len(b._forward_hooks)) for b in decoder_blocks(model)]

    before = n_hooks()  # transformers may keep hooks of its own on the blocks
    residual_stream(model, enc.input_ids, enc.attention_mask, [1, 7])
    assert n_hooks() == before


def test_rejects_points_past_the_stack(tiny_model):
    model, tok = tiny_model
    enc = _batch(tok)
    with pytest.raises(ValueError, match="outside"):
        residual_stream(model, enc.input_ids, enc.attention_mask, [0, 99])


def test_valid_token_mask_drops_padding_specials_and_first_position(tiny_model):
    _, tok = tiny_model
    ids = torch.tensor([[tok.bos_token_id, 10, 11, tok.pad_token_id], [12, 13, 14, 15]])
    attn = torch.tensor([[1, 1, 1, 0], [1, 1, 1, 1]])
    mask = valid_token_mask(ids, attn, special_token_ids(tok))
    assert mask.tolist() == [[False, True, True, False], [False, True, True, True]]
    mask = valid_token_mask(ids, attn, special_token_ids(tok), drop_first=False)
    assert mask.tolist() == [[False, True, True, False], [True, True, True, True]]


TEXTS = ["a", "What is 2 + 2?", "", "Let x = 3. Then 2x = 6.", "ok then", "The longest document of them all, by far.",
         "mid length one"]


def test_forward_batches_keep_document_order_and_pad_right_whatever_the_tokenizer_says(tiny_model, monkeypatch):
    _, tok = tiny_model
    monkeypatch.setattr(tok, "padding_side", "left")
    batches = list(forward_batches(tok, TEXTS, max_tokens=12, docs_per_forward=3))
    assert tok.padding_side == "left"  # a shared tokenizer is left as it was
    assert [b.docs_B.tolist() for b in batches] == [[0, 1, 2], [3, 4, 5], [6]]
    for b in batches:
        assert b.ids_BT.shape[1] == max(len(tok(TEXTS[d])["input_ids"][:12]) for d in b.docs_B.tolist())
        for row, d in enumerate(b.docs_B.tolist()):
            want = tok(TEXTS[d])["input_ids"][:12]
            n = len(want)
            assert b.ids_BT[row, :n].tolist() == want and (b.ids_BT[row, n:] == tok.pad_token_id).all()
            assert b.attn_BT[row].tolist() == [1] * n + [0] * (b.ids_BT.shape[1] - n)
        assert torch.equal(b.valid_BT, valid_token_mask(b.ids_BT, b.attn_BT, special_token_ids(tok)))


def test_a_batch_of_empty_documents_is_one_pad_column_with_nothing_valid(tiny_model):
    _, tok = tiny_model
    empty, short = forward_batches(tok, ["", "ab"], max_tokens=8, docs_per_forward=1)
    assert empty.ids_BT.tolist() == [[tok.pad_token_id]] and empty.attn_BT.tolist() == [[0]]
    assert not empty.valid_BT.any() and short.valid_BT.tolist() == [[False, True]]


def test_forward_batches_sort_by_length_within_windows_only(tiny_model):
    _, tok = tiny_model
    texts = TEXTS * 3
    lengths = [len(tok(t)["input_ids"]) for t in texts]
    batches = list(forward_batches(tok, texts, max_tokens=64, docs_per_forward=2, sort_window=3))
    assert sorted(d for b in batches for d in b.docs_B.tolist()) == list(range(len(texts)))
    for w in range(0, len(texts), 6):  # a window: 2 documents x 3 forwards
        in_window = [b for b in batches if w <= int(b.docs_B.min()) and int(b.docs_B.max()) < w + 6]
        docs = [d for b in in_window for d in b.docs_B.tolist()]
        assert sorted(docs) == list(range(w, min(w + 6, len(texts))))
        assert [lengths[d] for d in docs] == sorted(lengths[w:w + 6], reverse=True)
    assert all(b.ids_BT.shape[1] == int(b.attn_BT.sum(1).max()) for b in batches)  # padded to the longest


def test_valid_activations_of_a_padded_batch_equal_each_document_alone(tiny_model):
    model, tok = tiny_model
    layers = [0, 3, model.config.num_hidden_layers]
    special = special_token_ids(tok)
    for batch in forward_batches(tok, TEXTS, max_tokens=64, docs_per_forward=4, sort_window=2):
        acts_NLD = valid_activations(model, batch, layers).float()
        alone = []
        for d in batch.docs_B.tolist():
            ids = torch.tensor([tok(TEXTS[d])["input_ids"]], dtype=torch.long)
            if ids.numel():
                alone.append(residual_stream(model, ids, None, layers)[valid_token_mask(ids, None, special)])
        ref_NLD = torch.cat(alone).float()
        assert acts_NLD.shape == ref_NLD.shape
        # bf16 model: a batched matmul may round differently from a single document's.
        assert (acts_NLD - ref_NLD).abs().max() <= 0.02 * ref_NLD.abs().max()
        # What fills the padding does not reach the real tokens, bit for bit.
        other_pad = torch.where(batch.attn_BT.bool(), batch.ids_BT, torch.full_like(batch.ids_BT, 77))
        assert torch.equal(valid_activations(model, batch._replace(ids_BT=other_pad), layers).float(), acts_NLD)


def test_feature_pass_yields_documents_in_order_and_leaves_the_tokenizer_alone(tiny_model, monkeypatch):
    from sal.crosscoder import Crosscoder
    from sal.features import feature_pass

    model, tok = tiny_model
    monkeypatch.setattr(tok, "padding_side", "left")
    torch.manual_seed(0)
    cc = Crosscoder(d_model=model.config.hidden_size, n_layers=2, n_features=8)
    out = list(feature_pass(model, tok, cc, TEXTS, [1, 2], max_seq_len=10, batch_docs=3))
    assert tok.padding_side == "left"
    assert torch.cat([fb.doc_ids for fb in out]).tolist() == list(range(len(TEXTS)))
    for fb in out:
        for row, d in enumerate(fb.doc_ids.tolist()):
            want = tok(TEXTS[d])["input_ids"][:10]
            assert fb.token_ids_BT[row, :len(want)].tolist() == want
        assert (fb.feats_BTLC[~fb.mask_BT.to(fb.feats_BTLC.device)] == 0).all()
