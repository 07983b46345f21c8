"""Configuration of rule extraction: aggregation, counting and its resources (``rules.*``)."""

from __future__ import annotations

import math
from dataclasses import dataclass

from sal.config.choices import Aggregation, ExplanationLevel, LayerActivity, coerce_choices


@dataclass
class RulesConfig:
    """How per-sample layer counts are formed and how 1-/2-premise rules are counted (Appendix D)."""

    aggregate: Aggregation = Aggregation.last_token
    """How a sample's activations [tokens, layers, features] become its layer-count vector:
    ``last_token`` (paper's text: layers where the feature fires at the last non-padding token),
    ``any_token`` (layers where it fires at any token), ``algorithm1`` (literal Algorithm 1: sum
    over layers, threshold, count tokens; yields token counts, not layer counts)."""

    tau: float = 0.0
    """Activation threshold: a feature fires at a (token, layer) when its activation is > tau."""

    layer_activity: LayerActivity = LayerActivity.encoder
    """When feature c is active at layer l, the atom whose layers Eq. 2 counts: ``encoder``
    (the paper's text: h_c^l > tau) or ``cumulative`` (c fired at some layer l' <= l, so the
    causal decoder writes it into layer l's reconstruction: a_c = L - first firing layer, and
    a_p > a_q means p emerged first, the paper's stated intuition). README, readings table."""

    max_premises: int = 2
    """Largest premise set: 1 (p -> q) or 2 (p1 and p2 -> q), as in the paper."""

    beta: float = 1.0
    """Smoothing pseudo-count of Eq. 3: prob = (count(P, q) + beta) / (count(P) + 2 beta)."""

    min_premise_count: int = 1
    """Emit a rule only if its premise set fires in at least this many samples; premise sets
    below it are dropped before conclusions are enumerated (Apriori), which bounds the work."""

    min_rule_count: int = 1
    """Emit a rule only if count(P, q) (samples where every premise outranks the active
    conclusion) reaches this."""

    restrict_to_explained: bool = True
    """Restrict premises and conclusions to features whose explanation verifies at
    ``min_explanation_level`` or better (the paper's choice); all live features when no
    interpretation results exist yet or when False."""

    min_explanation_level: ExplanationLevel = ExplanationLevel.Maybe
    """Weakest verification label that keeps a feature when ``restrict_to_explained``:
    ``Yes``, ``Probably`` or ``Maybe``."""

    memory_budget_gb: float = 4.0
    """RAM for partial count tables and product blocks before they spill to disk; the final
    rules table (28 bytes per rule) comes on top."""

    chunk_samples: int = 4096
    """Samples per chunk of the sparse products (the paper's 3,267 samples fit in one)."""

    num_processes: int = 1
    """Ranks per node counting shards of the rule set (Lightning Fabric DDP; gloo on CPU); 1 =
    take ``trainer.devices`` when the trainer uses DDP. ``trainer.num_nodes`` multiplies it. Shards
    are written under ``<run>/rules/shards`` (a filesystem every node sees) and a rerun skips
    finished ones."""

    spill_dir: str | None = None
    """Folder for spilled partial tables; None = the system temporary folder (or the shards
    folder in a sharded run)."""

    progress: bool = True
    """Show progress bars for the feature pass and the counting."""

    def __post_init__(self) -> None:
        """Raise ``ValueError`` naming the field, the bad value and the fix."""
        coerce_choices(self, "rules")
        if self.max_premises not in (1, 2):
            raise ValueError(f"rules.max_premises={self.max_premises!r}: must be 1 or 2 (Appendix D counts up to two premises)")
        if self.layer_activity == LayerActivity.cumulative and self.aggregate == Aggregation.algorithm1:
            raise ValueError("rules.layer_activity=cumulative with rules.aggregate=algorithm1: Algorithm 1 sums "
                             "activations over layers, so it has no per-layer atom; use last_token or any_token")
        if not math.isfinite(self.tau):
            raise ValueError(f"rules.tau={self.tau!r}: must be a finite activation threshold (e.g. 0)")
        if not self.beta >= 0:
            raise ValueError(f"rules.beta={self.beta!r}: must be >= 0 (1 = uniform prior, 0 = no smoothing)")
        if self.min_premise_count < 1:
            raise ValueError(f"rules.min_premise_count={self.min_premise_count!r}: must be >= 1")
        if self.min_rule_count < 1:
            raise ValueError(
                f"rules.min_rule_count={self.min_rule_count!r}: must be >= 1 (rules never observed are not enumerated)"
            )
        if not self.memory_budget_gb > 0:
            raise ValueError(f"rules.memory_budget_gb={self.memory_budget_gb!r}: must be > 0 (e.g. 4)")
        if self.chunk_samples < 1:
            raise ValueError(f"rules.chunk_samples={self.chunk_samples!r}: must be >= 1 (e.g. 4096)")
        if self.num_processes < 1:
            raise ValueError(f"rules.num_processes={self.num_processes!r}: must be >= 1")
