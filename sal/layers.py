"""Which residual-stream points the crosscoder monitors.

Point ``i`` is the input of decoder block ``i``; point ``n_layers`` is the output of the last
block before the final norm, so a model with ``n_layers`` blocks has ``n_layers + 1`` points.
"""

from __future__ import annotations

import math
from typing import List, Sequence


def even_layers(n_layers: int, n_points: int = 8) -> List[int]:
    """``n_points`` residual-stream points from block 0's input to the last block's output.

    Point ``i`` is ``floor(i * n_layers / (n_points - 1) + 0.5)`` (round half up), so both
    ends are always included and the gaps differ by at most one block. For 28 blocks and 8
    points that is exactly the paper's ``[0, 4, 8, ..., 28]``; for 30 blocks it gives
    ``[0, 4, 9, 13, 17, 21, 26, 30]``, for 32 ``[0, 5, 9, 14, 18, 23, 27, 32]``.
    """
    if n_points < 2:
        raise ValueError(f"layers.n_points={n_points}: need at least 2 points (first and last).")
    if n_layers + 1 < n_points:
        raise ValueError(
            f"A model with {n_layers} blocks has only {n_layers + 1} residual-stream points, "
            f"fewer than layers.n_points={n_points}. Lower layers.n_points or use "
            f"layers=custom layers.indices=[...]."
        )
    return [int(math.floor(i * n_layers / (n_points - 1) + 0.5)) for i in range(n_points)]


def validate_layers(indices: Sequence[int], n_layers: int) -> List[int]:
    """Check monitored points against the model depth; returns them as a list of ints."""
    indices = [int(i) for i in indices]
    if not indices:
        raise ValueError("layers.indices is empty: give at least one residual-stream point.")
    bad = [i for i in indices if i < 0 or i > n_layers]
    if bad:
        raise ValueError(
            f"layers.indices={indices} has {bad} outside [0, {n_layers}]: this model has "
            f"{n_layers} blocks, so valid points are 0 (input of block 0) to {n_layers} "
            f"(output of the last block). Fix layers.indices or pick another model."
        )
    if sorted(set(indices)) != indices:
        raise ValueError(
            f"layers.indices={indices} must be strictly increasing without repeats "
            f"(the crosscoder's causal decoder reads layers in depth order)."
        )
    return indices
