"""The paper's schedules as pure functions of (step, total steps).

Step ``s`` is the 0-based index of the optimiser step about to be taken; ``total`` is the
configured step count, so the last step taken is ``total - 1`` and ``s = total`` is the
value the schedule reaches at the end of training.
"""

from __future__ import annotations


def lr_at(step: int, total: int, base_lr: float = 2e-4, cooldown_frac: float = 0.2) -> float:
    """Constant ``base_lr``, then linear cool-down to 0 over the last ``cooldown_frac`` of
    steps (Lindsey et al., as the paper follows): ``lr(0.8T) = base_lr``,
    ``lr(0.9T) = base_lr / 2``, ``lr(T) = 0``."""
    if total < 1:
        raise ValueError(f"total={total}: must be >= 1.")
    cooldown_steps = cooldown_frac * total
    start = total - cooldown_steps
    if step <= start or cooldown_steps <= 0:
        return base_lr
    return base_lr * max(0.0, (total - step) / cooldown_steps)


def sparsity_coef_at(step: int, total: int, final_coef: float = 5e-3, warmup_frac: float = 0.2) -> float:
    """Linear warm-up of the sparsity coefficient from 0 over the first ``warmup_frac`` of
    steps, then constant: ``coef(0) = 0``, ``coef(0.1T) = final / 2``, ``coef(0.2T) = final``."""
    if total < 1:
        raise ValueError(f"total={total}: must be >= 1.")
    warmup_steps = warmup_frac * total
    if warmup_steps <= 0 or step >= warmup_steps:
        return final_coef
    return final_coef * max(0.0, step / warmup_steps)
