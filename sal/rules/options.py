"""The settings of one rule count, as one frozen object.

``count_rules`` and ``run_sharded`` build a ``CountOptions`` once from their keyword arguments
and hand it down to every counting function (numpy engine, native kernel, shards, table), so a
setting is validated once and cannot drift between the layers.
"""

from __future__ import annotations

from dataclasses import dataclass

DEFAULT_CHUNK_SAMPLES = 4096
DEFAULT_MEMORY_BUDGET_GB = 4.0


@dataclass(frozen=True)
class CountOptions:
    """How rules are counted and filtered (Appendix D); validated on construction."""

    max_premises: int = 2
    """1 or 2 premises per rule."""
    beta: float = 1.0
    """Smoothing pseudo-count of Eq. 3: prob = (count(P, q) + beta) / (count(P) + 2 beta)."""
    min_premise_count: int = 1
    """Keep rules with count(P) >= this; premises below it are never enumerated (Apriori)."""
    min_rule_count: int = 1
    """Keep rules with count(P, q) >= this."""
    chunk_samples: int = DEFAULT_CHUNK_SAMPLES
    """Samples per chunk of the numpy engine's sparse products."""
    memory_budget_gb: float = DEFAULT_MEMORY_BUDGET_GB
    """RAM for partial tables and product blocks before spilling to disk (the returned table
    comes on top: 28 bytes per rule); also decides whether the native kernel's scratch fits."""
    spill_dir: str | None = None
    """Where spilled partial tables go (the system temporary folder when None)."""
    progress: bool = False
    """Show tqdm progress bars."""

    def __post_init__(self) -> None:
        if not self.beta >= 0:
            raise ValueError(f"beta={self.beta!r}: the smoothing pseudo-count must be >= 0 (1 = uniform prior)")
        if self.min_premise_count < 1:
            raise ValueError(
                f"min_premise_count={self.min_premise_count!r}: must be >= 1 (count(P) = 0 premises have no rules)"
            )
        if self.min_rule_count < 1:
            raise ValueError(
                f"min_rule_count={self.min_rule_count!r}: must be >= 1 "
                "(rules with count(P, q) = 0 are never enumerated)"
            )
        if self.max_premises not in (1, 2):
            raise ValueError(f"max_premises={self.max_premises!r}: only 1 or 2 premises are supported (Appendix D)")
        if self.chunk_samples < 1:
            raise ValueError(f"chunk_samples={self.chunk_samples!r}: must be >= 1")
        if not self.memory_budget_gb > 0:
            raise ValueError(f"memory_budget_gb={self.memory_budget_gb!r}: must be > 0")

    @property
    def memory_budget_bytes(self) -> int:
        return int(self.memory_budget_gb * 2**30)
