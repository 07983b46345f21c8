"""Schema of the network validation (``evaluate.py analysis=validate``): a synthetic language
with planted implications, two tiny transformers trained on it (sound text and shuffled
text), and the real SAL pipeline run on both (``sal.network_validation``)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import List, Optional

from sal.config.choices import Aggregation, ConclusionNaming, LayerActivity, Unplanted, coerce_choices


@dataclass
class NetworkValidationConfig:
    """Sizes of the language, the networks, the crosscoders and the statistics.

    The defaults are the "larger" run of ``evaluate.py analysis=validate`` (3 seeds; see
    docs/validation.md for its measured wall time);
    the test uses a smaller copy (tests/test_network_validation.py)."""

    seeds: List[int] = field(default_factory=lambda: [0, 1, 2])
    """One full replicate (language, both networks, their null twin, crosscoders, SAL) per seed."""

    # ------------------------------------------------------------------ the language
    n_relations_per_kind: int = 4
    """Planted relations per kind (Strict, Plausible, No); every relation has its own concepts."""
    two_premise_fraction: float = 0.5
    """Share of each kind's relations with two premise concepts (A and B adjacent -> C)."""
    n_background_concepts: int = 4
    """Concepts in no relation: they occur only at random, so every rule into them is unsound."""
    words_per_concept: int = 3
    """Word tokens per concept; concepts are disjoint sets of words."""
    n_filler_words: int = 40
    """Words that belong to no concept (the text between concept words)."""
    doc_len: int = 32
    """Words per document (a BOS token is added in front)."""
    premise_event_rate: float = 0.12
    """Probability, at a position that completes no premise, of starting a planted premise
    event (the premise words of a random relation): without it premises would meet by chance
    too rarely for a small network to learn the implications."""
    concept_rate: float = 0.3
    """Share of the other positions that draw a word of a random concept (the rest: filler);
    a concept's base rate is concept_rate / n_concepts per position."""
    plausible_strength: List[float] = field(default_factory=lambda: [0.6, 0.9])
    """[low, high]: P(conclusion next | premises) of a plausible relation, drawn per relation."""
    n_train_docs: int = 1500
    """Training documents per network (the shuffled network gets the same documents shuffled)."""
    n_heldout_docs: int = 200
    """Held-out sound documents for the networks' loss and their accuracy at conclusions."""
    n_activation_docs: int = 150
    """Sound documents whose residual stream trains each crosscoder."""
    n_mapping_docs: int = 150
    """Sound documents whose top activations map each feature to a concept (the "explanation")."""
    n_rule_samples: int = 800
    """Rule-set samples: prefixes of fresh sound documents, read at their last token."""
    trigger_cut_fraction: float = 0.5
    """Share of rule-set prefixes that end right where a planted premise completes (the rest
    end at a random position), so that the premises of every relation are read often enough."""

    # ------------------------------------------------------------------ the networks
    n_layers: int = 4
    """Decoder blocks of the tiny Llama; the residual stream is read at all n_layers + 1 points."""
    d_model: int = 48
    """Residual width of the tiny Llama."""
    n_heads: int = 4
    """Attention heads of the tiny Llama."""
    train_steps: int = 400
    """AdamW steps per network."""
    batch_docs: int = 32
    """Documents per training step."""
    lr: float = 3e-3
    """Peak learning rate of the networks (linear warm-up over 5% of steps, cosine decay)."""

    # ------------------------------------------------------------------ the crosscoders
    n_features: int = 256
    """Crosscoder dictionary size C."""
    sparsity_coef: float = 0.02
    """alpha of the crosscoder loss (mse_reduction=mean, decoder-norm-weighted L1): the fixed
    alpha when target_l0 is None, else where the L0 controller starts."""
    target_l0: Optional[float] = 4.0
    """Distinct active features per token that every crosscoder is trained to (the training
    stage's crosscoder.target_l0 controller, adapting alpha from sparsity_coef); the same
    sparsity for the three networks. None: one fixed alpha (sparsity_coef) for all (the
    setting before docs/validation.md's second round)."""
    crosscoder_steps: int = 600
    """Adam steps per crosscoder."""
    crosscoder_batch_tokens: int = 512
    """Tokens per crosscoder step."""
    crosscoder_lr: float = 2e-3
    """Crosscoder learning rate (the paper's schedule shape: constant, then linear cool-down)."""

    # ------------------------------------------------------------------ rules and the judge
    aggregate: Aggregation = Aggregation.last_token
    """How a rule-set sample's activations become its layer counts (rules.aggregate)."""
    layer_activity: LayerActivity = LayerActivity.cumulative
    """When a feature is active at a layer (rules.layer_activity): cumulative (from the first
    layer it fires at on; with it the networks' learnt rules are counted at all) or encoder
    (the paper's text, the main pipeline's default)."""
    tau: float = 0.0
    """Activation threshold of the layer counts (rules.tau)."""
    min_premise_count: int = 5
    """Premise sets firing in fewer samples are not counted (rules.min_premise_count)."""
    top_k: int = 30
    """Top activations per feature that the ground-truth judge reads to name its concept."""
    min_purity: float = 0.6
    """A feature maps to a concept when at least this share of its top activations sit on (or
    next to) that concept's words; otherwise it is unexplained and its rules are left out."""
    offsets: List[int] = field(default_factory=lambda: [-1, 0, 1])
    """Token offsets the judge looks at around an activation: -1 previous word ("after A"),
    0 the word itself, +1 the next word ("before C", a prediction)."""
    conclusion_naming: ConclusionNaming = ConclusionNaming.next_word
    """The concept a rule's conclusion feature stands for: "word" (the concept its top
    activations sit on) or "next_word" (the concept they are followed by, where min_purity of
    them are: a feature firing on A before C concludes C; otherwise the word's concept)."""
    unplanted: Unplanted = Unplanted.no
    """Rules between explained features whose concepts are related by no planted relation:
    "no" (label them No: the generator draws the conclusion independently of the premises)
    or "drop" (leave them out, keeping only the planted relations' rules)."""

    # ------------------------------------------------------------------ statistics and outputs
    min_rules_per_category: int = 10
    """A category with fewer labelled rules is dropped from SAL (evaluate.min_rules_per_category)."""
    n_bootstrap: int = 500
    """Bootstrap replicates for the CIs of SAL and delta-SAL."""
    n_permutations: int = 500
    """Permutations for the p-values of SAL and delta-SAL."""
    figures_dir: str = "docs/validation"
    """Where the figures are also copied (relative to the repository root); empty: not copied."""

    def __post_init__(self) -> None:
        """Raise ``ValueError`` naming the field, the bad value and the fix."""
        p = "analysis.network"
        coerce_choices(self, p)
        if not self.seeds or len(set(self.seeds)) != len(self.seeds):
            raise ValueError(f"{p}.seeds={list(self.seeds)}: give one or more distinct integers, e.g. [0, 1, 2].")
        for name in ("n_relations_per_kind", "words_per_concept", "n_filler_words", "n_train_docs", "n_heldout_docs",
                     "n_activation_docs", "n_mapping_docs", "n_rule_samples", "n_layers", "d_model", "n_heads",
                     "train_steps", "batch_docs", "n_features", "crosscoder_steps", "crosscoder_batch_tokens", "top_k",
                     "min_premise_count", "min_rules_per_category", "n_bootstrap", "n_permutations"):
            if getattr(self, name) < 1:
                raise ValueError(f"{p}.{name}={getattr(self, name)}: must be a positive integer.")
        if self.n_background_concepts < 0:
            raise ValueError(f"{p}.n_background_concepts={self.n_background_concepts}: must be >= 0.")
        if self.doc_len < 8:
            raise ValueError(f"{p}.doc_len={self.doc_len}: give at least 8 words so a prefix can hold a premise event.")
        if self.d_model % self.n_heads:
            raise ValueError(f"{p}.d_model={self.d_model} is not divisible by n_heads={self.n_heads}.")
        for name in ("two_premise_fraction", "trigger_cut_fraction"):
            if not 0 <= getattr(self, name) <= 1:
                raise ValueError(f"{p}.{name}={getattr(self, name)}: must be in [0, 1].")
        for name in ("premise_event_rate", "concept_rate"):
            if not 0 < getattr(self, name) < 1:
                raise ValueError(f"{p}.{name}={getattr(self, name)}: must be in (0, 1).")
        lo_hi = list(self.plausible_strength)
        if len(lo_hi) != 2 or not 0 < lo_hi[0] <= lo_hi[1] < 1:
            raise ValueError(f"{p}.plausible_strength={lo_hi}: give [low, high] with 0 < low <= high < 1 "
                             f"(1 would make the relation strict).")
        if not self.lr > 0 or not self.crosscoder_lr > 0:
            raise ValueError(f"{p}.lr={self.lr}, crosscoder_lr={self.crosscoder_lr}: both must be > 0.")
        if self.target_l0 is not None and not self.target_l0 > 0:
            raise ValueError(f"{p}.target_l0={self.target_l0}: must be > 0, or null for a fixed alpha.")
        if self.target_l0 is not None and not self.sparsity_coef > 0:
            raise ValueError(f"{p}.sparsity_coef={self.sparsity_coef}: the L0 controller starts from it, so it must be > 0.")
        if self.sparsity_coef < 0:
            raise ValueError(f"{p}.sparsity_coef={self.sparsity_coef}: must be >= 0.")
        if not 0 < self.min_purity <= 1:
            raise ValueError(f"{p}.min_purity={self.min_purity}: must be in (0, 1].")
        if not self.offsets or any(abs(o) > 2 for o in self.offsets):
            raise ValueError(f"{p}.offsets={list(self.offsets)}: give offsets within [-2, 2], e.g. [-1, 0, 1].")

