"""b_dec starts at the mean of the first batch (in normalised units) unless told otherwise."""

import pytest
import torch
from torch.utils.data import DataLoader

from sal.config.crosscoder import CrosscoderConfig, OptimConfig
from sal.training.module import CrosscoderModule

# One optimiser step without a logger: the module's self.log calls have nowhere to go.
pytestmark = pytest.mark.filterwarnings("ignore:You called `self.log")


def _first_step(init: str, *batches_BLD: torch.Tensor) -> CrosscoderModule:
    """One optimiser step (len(batches) micro-batches) at a learning rate too small to move b_dec."""
    import lightning as L

    n = len(batches_BLD)
    module = CrosscoderModule(CrosscoderConfig(n_features=16, init_decoder_bias=init),
                              OptimConfig(max_steps=1, lr=1e-12, batch_instances=n, micro_batch_instances=1),
                              n_layers=batches_BLD[0].shape[1], d_model=batches_BLD[0].shape[2],
                              accumulate_grad_batches=n)
    trainer = L.Trainer(max_steps=1, accumulate_grad_batches=n, accelerator="cpu", logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(module, train_dataloaders=DataLoader(list(batches_BLD), batch_size=None))
    return module


def test_decoder_bias_starts_at_the_first_batch_mean_in_normalised_units():
    gen = torch.Generator().manual_seed(0)
    offset_LD = torch.tensor([[5.0, -3.0, 0.0], [0.5, 0.5, 40.0]])
    acts_BLD = offset_LD + torch.randn(64, 2, 3, generator=gen)
    module = _first_step("mean", acts_BLD)
    cc = module.crosscoder.requires_grad_(False)
    # hand-computed: scale_l = sqrt(D / mean ||x^l||^2), b_dec^l = scale_l * mean_b x^l
    scale_L = (3 / acts_BLD.pow(2).sum(-1).mean(0)).sqrt()
    assert torch.allclose(cc.act_scale, scale_L, rtol=1e-5)
    assert torch.allclose(cc.b_dec, scale_L[:, None] * acts_BLD.mean(0), rtol=1e-5, atol=1e-5)
    # the reconstruction of an all-zero feature vector is then the mean: fvu 1, not the
    # sum-of-squares/variance ratio that a zero bias gives
    x_BLD = cc.normalise(acts_BLD)
    err = (x_BLD - cc.b_dec).pow(2).sum()
    assert err == pytest.approx((x_BLD - x_BLD.mean(0)).pow(2).sum().item(), rel=1e-5)


def test_decoder_bias_zero_keeps_the_paper_initialisation():
    acts_BLD = torch.randn(32, 2, 3) + 7.0
    module = _first_step("zero", acts_BLD)
    assert module.crosscoder.b_dec.abs().max() < 1e-9  # one AdamW step of lr 1e-12 from zero


def test_decoder_bias_is_set_once_not_on_later_micro_batches():
    acts_BLD = torch.randn(32, 2, 3) + 7.0
    alone = _first_step("mean", acts_BLD).crosscoder.b_dec.detach()
    # a second micro-batch of the same optimiser step, far from the first, changes nothing
    both = _first_step("mean", acts_BLD, acts_BLD - 20.0).crosscoder.b_dec.detach()
    assert torch.allclose(both, alone, atol=1e-6)


def test_unknown_decoder_bias_init_is_refused_with_the_choices():
    with pytest.raises(ValueError, match="init_decoder_bias='median'.*mean"):
        CrosscoderConfig(init_decoder_bias="median")
