"""The target-L0 controller: convergence on a simulated lagged response, freezing, resume,
and its place in the training module's alpha schedule."""

from __future__ import annotations

import math

import pytest

from sal.config.crosscoder import CrosscoderConfig, OptimConfig
from sal.training.sparsity_control import SparsityController


def _plant(controller: SparsityController, steps: int, lag: float = 0.1, k: float = 2000.0) -> list[float]:
    """L0 = k / alpha_seen, where alpha_seen follows alpha with a first-order lag (weights take
    steps to respond to a new penalty) and k drifts down 0.2% a step (a dictionary keeps
    sparsifying at a fixed alpha)."""
    seen, history = math.log(controller.coef), []
    for step in range(steps):
        seen += lag * (math.log(controller.coef) - seen)
        l0 = k * (0.998 ** step) / math.exp(seen)
        history.append(l0)
        controller.update(step, l0)
    return history


@pytest.mark.parametrize("target", [16, 32, 64])
def test_controller_reaches_the_target_from_a_poor_start_then_freezes(target):
    c = SparsityController(target, start_coef=1.0, first_step=0, last_step=300)
    history = _plant(c, 300)
    assert history[0] == pytest.approx(2000 / 1.0)
    assert abs(history[-1] / target - 1) < 0.15
    frozen = c.coef
    assert c.update(300, 5 * target) == frozen and c.update(301, target / 5) == frozen


def test_controller_does_not_adapt_before_its_first_step():
    c = SparsityController(10, start_coef=2.0, first_step=5, last_step=50)
    for step in range(5):
        assert c.update(step, 1000.0) == 2.0
    assert c.update(5, 1000.0) > 2.0  # too dense: alpha rises
    d = SparsityController(10, start_coef=2.0, first_step=0, last_step=50)
    assert d.update(0, 1.0) < 2.0  # too sparse: alpha falls


def test_controller_state_survives_a_checkpoint():
    a = SparsityController(20, start_coef=1.0, first_step=0, last_step=100)
    _plant(a, 40)
    b = SparsityController(20, start_coef=1.0, first_step=0, last_step=100)
    b.load_state_dict(a.state_dict())
    assert b.coef == a.coef
    assert [b.update(s, 50.0) for s in range(40, 45)] == [a.update(s, 50.0) for s in range(40, 45)]


def test_module_ramps_to_the_controllers_alpha():
    from sal.training.module import CrosscoderModule

    cc = CrosscoderConfig(n_features=16, sparsity_coef=2.0, target_l0=4)
    m = CrosscoderModule(cc, OptimConfig(max_steps=100, sparsity_warmup_frac=0.2), n_layers=2, d_model=4)
    assert (m.sparsity_control.first_step, m.sparsity_control.last_step) == (20, 90)
    m.sparsity_control.log_coef.fill_(math.log(8.0))
    assert m.current_sparsity_coef() == pytest.approx(0.0)  # step 0 of the ramp
    assert "sparsity_control.log_coef" in m.state_dict()


@pytest.mark.parametrize("kwargs, message", [
    (dict(arch="topk", target_l0=8), "applies to arch=relu"),
    (dict(target_l0=0), "must be > 0"),
    (dict(target_l0=10_000, n_features=64), "at most n_features"),
    (dict(target_l0_unit="tokens"), "features, pairs"),
    (dict(target_l0_adapt_frac=1.0), "must be in"),
])
def test_bad_targets_fail_validation(kwargs, message):
    with pytest.raises(ValueError, match=message):
        CrosscoderConfig(**kwargs)
