import pytest
import torch

from sal.activations import decoder_blocks, residual_stream, special_token_ids, valid_token_mask


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
