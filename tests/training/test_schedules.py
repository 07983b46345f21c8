import pytest
import torch

from sal.training.schedules import lr_at, sparsity_coef_at

T = 5000  # the paper's step count


@pytest.mark.parametrize("frac, expected", [(0.0, 2e-4), (0.1, 2e-4), (0.2, 2e-4), (0.5, 2e-4), (0.8, 2e-4),
                                            (0.9, 1e-4), (1.0, 0.0)])
def test_lr_constant_then_linear_cooldown_over_last_20_percent(frac, expected):
    assert lr_at(int(frac * T), T) == pytest.approx(expected, abs=1e-15)


@pytest.mark.parametrize("frac, expected", [(0.0, 0.0), (0.1, 2.5e-3), (0.2, 5e-3), (0.5, 5e-3), (0.8, 5e-3),
                                            (0.9, 5e-3), (1.0, 5e-3)])
def test_sparsity_coef_ramps_linearly_over_first_20_percent(frac, expected):
    assert sparsity_coef_at(int(frac * T), T) == pytest.approx(expected, abs=1e-15)


def test_schedules_are_monotone_and_linear_inside_their_ramps():
    lrs = [lr_at(s, T) for s in range(T + 1)]
    coefs = [sparsity_coef_at(s, T) for s in range(T + 1)]
    assert all(a >= b for a, b in zip(lrs, lrs[1:]))
    assert all(a <= b for a, b in zip(coefs, coefs[1:]))
    # second differences vanish inside each ramp (linear)
    assert max(abs(lrs[s + 1] - 2 * lrs[s] + lrs[s - 1]) for s in range(4001, 4999)) < 1e-15
    assert max(abs(coefs[s + 1] - 2 * coefs[s] + coefs[s - 1]) for s in range(1, 999)) < 1e-15


def test_module_optimiser_follows_the_schedule():
    """The LambdaLR built by the LightningModule reproduces lr_at step by step."""
    from sal.config.crosscoder import CrosscoderConfig, OptimConfig
    from sal.training.module import CrosscoderModule

    opt_cfg = OptimConfig(max_steps=50, lr=3e-4, batch_instances=1, tokens_per_instance=8, shuffle_buffer_tokens=8)
    module = CrosscoderModule(CrosscoderConfig(n_features=8), opt_cfg, n_layers=2, d_model=4)
    conf = module.configure_optimizers()
    opt, sched = conf["optimizer"], conf["lr_scheduler"]["scheduler"]
    assert opt.defaults["eps"] == 6.25e-10 and opt.defaults["betas"] == (0.9, 0.999)
    assert opt.defaults["weight_decay"] == 0.0
    for step in range(50):
        assert opt.param_groups[0]["lr"] == pytest.approx(lr_at(step, 50, 3e-4), abs=1e-12)
        opt.step()
        sched.step()


def test_gradient_clipping_caps_the_global_norm():
    import warnings

    from sal.config.crosscoder import CrosscoderConfig, OptimConfig
    from sal.training.module import CrosscoderModule

    opt_cfg = OptimConfig(grad_clip=0.5, batch_instances=1, tokens_per_instance=8, shuffle_buffer_tokens=8)
    module = CrosscoderModule(CrosscoderConfig(n_features=8), opt_cfg, n_layers=2, d_model=4)
    for p in module.crosscoder.parameters():
        p.grad = torch.full_like(p, 3.0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # self.log without a Trainer
        module.on_before_optimizer_step(None)
    norm = torch.sqrt(sum(p.grad.pow(2).sum() for p in module.crosscoder.parameters()))
    assert norm.item() == pytest.approx(0.5, rel=1e-4)
