import json

import pytest
import torch

from sal.crosscoder import Crosscoder, TopKCrosscoder, estimate_activation_scales, flops_per_token

L, D, C, B = 3, 4, 5, 6


def _random_crosscoder(decoder_norm="l2", seed=0):
    torch.manual_seed(seed)
    cc = Crosscoder(L, D, C, decoder_norm=decoder_norm).double()
    with torch.no_grad():
        for p in cc.parameters():
            p.copy_(torch.randn_like(p))  # random weights *and* biases, not the init
    return cc


def _loss_by_hand(cc, x, coef):
    """Eq. 6 with explicit loops over tokens, layers, features and dimensions."""
    We, be, Wd, bd = (t.detach().tolist() for t in (cc.W_enc, cc.b_enc, cc.W_dec, cc.b_dec))
    xs = x.tolist()
    mse = sparsity = 0.0
    for b in range(B):
        h = [[max(0.0, sum(xs[b][l][d] * We[l][d][c] for d in range(D)) + be[l][c]) for c in range(C)]
             for l in range(L)]
        for l in range(L):
            for d in range(D):
                recon = bd[l][d] + sum(h[lp][c] * Wd[lp][c][d] for lp in range(l + 1) for c in range(C))
                mse += (xs[b][l][d] - recon) ** 2
        for l in range(L):
            for c in range(C):
                row = Wd[l][c]
                norm = sum(v * v for v in row) ** 0.5 if cc.decoder_norm == "l2" else sum(abs(v) for v in row)
                sparsity += h[l][c] * norm
    mse, sparsity = mse / B, sparsity / B
    return mse, sparsity, mse + coef * sparsity


@pytest.mark.parametrize("decoder_norm", ["l2", "l1"])
def test_loss_equals_formula_computed_by_hand(decoder_norm):
    cc = _random_crosscoder(decoder_norm)
    x = torch.randn(B, L, D, dtype=torch.float64)
    out = cc.loss(x, sparsity_coef=0.37)
    mse, sparsity, total = _loss_by_hand(cc, x, 0.37)
    assert out.mse.item() == pytest.approx(mse, rel=1e-9)
    assert out.sparsity.item() == pytest.approx(sparsity, rel=1e-9)
    assert out.total.item() == pytest.approx(total, rel=1e-9)
    assert (out.feats_BLC > 0).any() and (out.feats_BLC == 0).any()  # ReLU active on both sides


def test_mean_reduction_averages_the_squared_error_over_layers_and_dimensions(tmp_path):
    cc = _random_crosscoder()
    cc.mse_reduction = "mean"
    x = torch.randn(B, L, D, dtype=torch.float64)
    out = cc.loss(x, sparsity_coef=0.37)
    mse_sum, sparsity, _ = _loss_by_hand(cc, x, 0.37)
    assert out.mse.item() == pytest.approx(mse_sum / (L * D), rel=1e-9)
    assert out.sparsity.item() == pytest.approx(sparsity, rel=1e-9)  # the penalty is unchanged
    assert out.total.item() == pytest.approx(mse_sum / (L * D) + 0.37 * sparsity, rel=1e-9)
    cc.save_pretrained(tmp_path / "export")
    assert Crosscoder.from_pretrained(tmp_path / "export").mse_reduction == "mean"
    with pytest.raises(ValueError, match="mse_reduction"):
        Crosscoder(L, D, C, mse_reduction="avg")


def test_l1_and_l2_norms_differ():
    x = torch.randn(B, L, D, dtype=torch.float64)
    s2 = _random_crosscoder("l2").loss(x, 1.0).sparsity
    s1 = _random_crosscoder("l1").loss(x, 1.0).sparsity
    assert s1 > s2  # ||v||_1 >= ||v||_2, strictly for random rows


def test_causal_property_later_layers_do_not_affect_earlier_reconstructions():
    cc = _random_crosscoder()
    h = torch.rand(B, L, C, dtype=torch.float64)
    base = cc.decode(h)
    for l in range(L):
        changed = h.clone()
        changed[:, l + 1:] = torch.rand_like(changed[:, l + 1:]) * 5
        out = cc.decode(changed)
        assert torch.equal(out[:, : l + 1], base[:, : l + 1])
        if l + 1 < L:
            assert not torch.allclose(out[:, l + 1:], base[:, l + 1:])
    # and a feature at layer l does reach every later layer
    only0 = torch.zeros_like(h)
    only0[:, 0] = h[:, 0]
    out = cc.decode(only0) - cc.b_dec
    for l in range(L):
        assert torch.allclose(out[:, l], h[:, 0] @ cc.W_dec[0])


def test_init_decoder_rows_have_the_chosen_norm_and_encoder_is_transpose():
    cc = Crosscoder(2, 8, 16, init_decoder_norm=0.1)
    assert torch.allclose(cc.W_dec.norm(dim=-1), torch.full((2, 16), 0.1), atol=1e-6)
    assert torch.equal(cc.W_enc, cc.W_dec.transpose(1, 2))
    assert not cc.b_enc.any() and not cc.b_dec.any()


def test_normalisation_gives_mean_squared_norm_d():
    torch.manual_seed(0)
    layer_scale = torch.tensor([0.5, 3.0, 40.0])
    acts = torch.randn(4000, L, 16) * layer_scale[:, None] + 1.0
    batches = acts.split(500)
    scales = estimate_activation_scales(batches)
    cc = Crosscoder(L, 16, 8)
    cc.set_activation_scales(scales)
    normed = cc.normalise(acts)
    mean_sq_L = normed.pow(2).sum(-1).mean(0)
    assert torch.allclose(mean_sq_L, torch.full((L,), 16.0), rtol=1e-5)
    assert torch.allclose(cc.denormalise(normed), acts, rtol=1e-5)


def test_save_and_from_pretrained_round_trip(tmp_path):
    cc = _random_crosscoder().float()
    cc.set_activation_scales(torch.tensor([0.5, 2.0, 3.0]))
    cc.save_pretrained(tmp_path / "cc", {"layers": [0, 4, 8], "subject_model": {"name": "tiny"}})
    cfg = json.loads((tmp_path / "cc" / "config.json").read_text())
    assert cfg["layers"] == [0, 4, 8] and cfg["n_features"] == C and cfg["activation_scales"] == [0.5, 2.0, 3.0]
    back = Crosscoder.from_pretrained(tmp_path / "cc")
    for k, v in cc.state_dict().items():
        assert torch.equal(back.state_dict()[k], v), k
    x = torch.randn(7, L, D)
    assert torch.equal(back.features(x), cc.features(x))


def test_folded_export_reads_raw_activations(tmp_path):
    cc = _random_crosscoder().float()
    cc.set_activation_scales(torch.tensor([0.5, 2.0, 3.0]))
    cc.save_pretrained(tmp_path / "folded", fold_scales=True)
    folded = Crosscoder.from_pretrained(tmp_path / "folded")
    raw = torch.randn(9, L, D) * 5
    assert torch.allclose(folded.encode(raw), cc.encode(cc.normalise(raw)), atol=1e-5)
    recon = cc.denormalise(cc.decode(cc.features(raw)))
    assert torch.allclose(folded.denormalise(folded.decode(folded.features(raw))), recon, atol=1e-4)
    assert not cc.scales_folded  # exporting folded leaves the training copy untouched


def test_topk_keeps_k_pairs_per_token_and_round_trips(tmp_path):
    torch.manual_seed(0)
    cc = TopKCrosscoder(L, D, 32, k=4, topk_mode="token")
    with torch.no_grad():
        cc.b_enc.fill_(1.0)  # every pre-activation positive, so exactly k survive
    feats = cc.encode(torch.randn(10, L, D))
    assert ((feats > 0).sum(dim=(1, 2)) == 4).all()
    cc.save_pretrained(tmp_path / "topk")
    back = Crosscoder.from_pretrained(tmp_path / "topk")
    assert isinstance(back, TopKCrosscoder) and back.k == 4


def test_auxk_gradient_reaches_dead_features_and_main_loss_does_not():
    torch.manual_seed(0)
    n_feat, k = 16, 2
    cc = TopKCrosscoder(L, D, n_feat, k=k, topk_mode="token", aux_k=4)
    dead = torch.zeros(L, n_feat, dtype=torch.bool)
    dead[:, n_feat // 2:] = True
    with torch.no_grad():
        # Alive latents fire strongly, dead ones weakly but positively: the main TopK never
        # picks a dead latent, AuxK can.
        cc.b_enc[:, : n_feat // 2] = 10.0
        cc.b_enc[:, n_feat // 2:] = 0.5
    x = torch.randn(8, L, D)

    out = cc.loss(x, dead_mask_LC=dead)
    assert out.aux > 0
    g_main = torch.autograd.grad(out.mse, [cc.W_enc, cc.b_enc, cc.W_dec], retain_graph=True)
    g_aux = torch.autograd.grad(out.aux, [cc.W_enc, cc.b_enc, cc.W_dec])
    (ge, gb, gd), (ae, ab, ad) = g_main, g_aux
    # main loss: nothing reaches dead latents' encoder columns or decoder rows
    assert not ge[:, :, dead[0]].any() and not gb[dead].any() and not gd[dead].any()
    # AuxK: gradient reaches the dead latents' encoder and decoder ...
    assert ae[:, :, dead[0]].abs().sum() > 0 and ab[dead].abs().sum() > 0 and ad[dead].abs().sum() > 0
    # ... and only them (its target is the detached residual)
    assert not ae[:, :, ~dead[0]].any() and not ab[~dead].any() and not ad[~dead].any()
    # the total carries both, with AuxK weighted by aux_coef
    assert out.total.item() == pytest.approx(out.mse.item() + cc.aux_coef * out.aux.item(), rel=1e-6)


def test_no_dead_latents_means_no_aux_loss():
    cc = TopKCrosscoder(L, D, 16, k=2)
    out = cc.loss(torch.randn(8, L, D), dead_mask_LC=torch.zeros(L, 16, dtype=torch.bool))
    assert out.aux.item() == 0.0


def test_batch_topk_keeps_k_times_batch_and_uses_threshold_in_eval():
    torch.manual_seed(0)
    cc = TopKCrosscoder(L, D, 32, k=3, topk_mode="batch")
    with torch.no_grad():
        cc.b_enc.fill_(1.0)
    x = torch.randn(20, L, D)
    feats = cc.encode(x)
    assert int((feats > 0).sum()) == 3 * 20
    assert cc.threshold > 0
    cc.eval()
    eval_l0 = (cc.encode(x) > 0).sum(dim=(1, 2)).float().mean()
    assert 0 < eval_l0 < L * 32  # a threshold, not "everything"


def test_bad_shapes_and_options_explain_the_fix():
    cc = Crosscoder(L, D, C)
    with pytest.raises(ValueError, match="flatten batch and sequence"):
        cc.encode(torch.randn(2, 5, L, D))
    with pytest.raises(ValueError, match="decoder_norm"):
        Crosscoder(L, D, C, decoder_norm="l3")


def test_flops_per_token_counts_encoder_and_decoder():
    assert flops_per_token(8, 3584, 32768, backward=False) == 2 * 8 * 3584 * 32768 * 2
    assert flops_per_token(8, 3584, 32768, input_grad=True) == 3 * flops_per_token(8, 3584, 32768, backward=False)
    assert flops_per_token(8, 3584, 32768) == 10 * 8 * 3584 * 32768  # no gradient wrt the activations
