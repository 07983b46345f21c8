"""Matched sparsity: a feedback controller that adapts the ReLU crosscoder's sparsity
coefficient alpha until the dictionary's measured L0 reaches a target, then freezes it.

alpha is adapted in log space once per optimiser step, integrating the log ratio of a
smoothed L0 to the target plus a lead term: ``log alpha += gain * (log(L0_ema / target) +
lead_steps * slope)``, where ``slope`` is the smoothed per-step change of log L0, each change
clipped to ``max_change``. L0 falls as alpha rises, but tens of steps late (Adam moves the
encoder's biases a learning rate at a time): a plain integral controller then overshoots,
kills features, and recovers slowly, since L0 climbs back far more slowly than it falls. The
lead term reacts to where L0 is heading instead. The log makes a 2x miss worth the same
correction at L0 = 10 and L0 = 1000.
alpha adapts over steps ``[first_step, last_step)`` and then stays fixed, so the rest of
training (and the LR cool-down) optimises one loss, the way a fixed-alpha run does. The state lives in buffers, so a
resumed run continues the same controller.
"""

from __future__ import annotations

import math

import torch
from torch import nn


class SparsityController(nn.Module):
    def __init__(self, target_l0: float, start_coef: float, first_step: int, last_step: int, gain: float = 0.04,
                 ema_decay: float = 0.5, max_change: float = 0.1, lead_steps: float = 30.0) -> None:
        super().__init__()
        if target_l0 <= 0 or start_coef <= 0:
            raise ValueError(f"target_l0={target_l0} and start_coef={start_coef} must both be > 0.")
        self.target_l0, self.first_step, self.last_step = float(target_l0), int(first_step), int(last_step)
        self.gain, self.ema_decay, self.max_change = float(gain), float(ema_decay), float(max_change)
        self.lead_steps = float(lead_steps)
        self.register_buffer("log_coef", torch.tensor(math.log(start_coef), dtype=torch.float64))
        self.register_buffer("l0_ema", torch.tensor(float("nan"), dtype=torch.float64))
        self.register_buffer("log_l0_trend", torch.zeros((), dtype=torch.float64))

    @classmethod
    def over_training(cls, target_l0: float, start_coef: float, total_steps: int, warmup_frac: float,
                      adapt_frac: float) -> "SparsityController":
        """Adapting from the end of the alpha warm-up to ``adapt_frac`` of ``total_steps``, as
        crosscoder.target_l0_adapt_frac describes."""
        return cls(target_l0, start_coef, first_step=int(warmup_frac * total_steps),
                   last_step=max(1, int(adapt_frac * total_steps)))

    @property
    def coef(self) -> float:
        return math.exp(float(self.log_coef))

    def adapting(self, step: int) -> bool:
        return self.first_step <= step < self.last_step

    @torch.no_grad()
    def update(self, step: int, measured_l0: float) -> float:
        """Record the L0 measured at optimiser step ``step``; returns alpha for the next step."""
        if not self.adapting(step):
            return self.coef
        measured = max(float(measured_l0), 1e-3)
        previous = float(self.l0_ema)
        ema = measured if math.isnan(previous) else self.ema_decay * previous + (1 - self.ema_decay) * measured
        if not math.isnan(previous):
            # Smoothed slope of log L0 per step: where L0 is heading while the weights catch up.
            self.log_l0_trend.mul_(0.8).add_(0.2 * (math.log(ema) - math.log(previous)))
        self.l0_ema.fill_(ema)
        predicted = math.log(ema / self.target_l0) + self.lead_steps * float(self.log_l0_trend)
        change = self.gain * predicted
        self.log_coef.add_(max(-self.max_change, min(self.max_change, change)))
        return self.coef
