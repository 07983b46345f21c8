"""Schemas for evaluate.py: SAL of one model, cross-model analysis, validation and power."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import List, Optional

from sal.config.choices import (SOUNDNESS_CATEGORIES, Analysis, CountScope, EmptyCategory, Metric, PowerSource,
                                WorldMode, coerce_choices)
from sal.config.validation import NetworkValidationConfig


def _check_range(name: str, values, low: float, high: float) -> None:
    if len(values) != 2 or not low <= values[0] <= values[1] <= high:
        raise ValueError(
            f"{name}={list(values)}: give [low, high] with {low} <= low <= high <= {high}."
        )


@dataclass
class EvalConfig:
    n_rules_per_arity: int = 500
    """Rules drawn uniformly at random per arity (1 and 2 premises) for the judge to label."""
    seed: int = 0
    """Seed of the rule sample, the bootstrap and the permutation test."""
    bins: int = 20
    """Uniform bins on [0, 1] for the SAL histograms (the paper does not state B; see
    sal.metrics for why 20)."""
    report_bins: List[int] = field(default_factory=lambda: [10, 20, 50])
    """Bin counts at which SAL is also reported, to show B does not drive the result."""
    n_bootstrap: int = 1000
    """Bootstrap replicates (rules resampled within each category) for the CI of SAL."""
    n_permutations: int = 1000
    """Label permutations for the p-value against a soundness-agnostic model."""
    ci_level: float = 0.95
    """Coverage of the bootstrap confidence interval."""
    empty_category: EmptyCategory = EmptyCategory.error
    """What to do when a soundness category has no labelled rules: error (stop, naming it)
    or drop (compute SAL over the other categories, with a warning in the report)."""
    human_labels: Optional[str] = None
    """CSV of human soundness labels (p1, p2, q, category): those rules are also put to the
    judge and raw agreement and Cohen's kappa are reported (the paper: 0.566 agreement)."""
    min_rules_per_category: int = 10
    """A category with fewer labelled rules than this is treated like an empty one (error or
    drop, as empty_category says): a histogram of two or three rules is not a distribution,
    and its JSD to the others is noise."""
    categories: List[str] = field(default_factory=lambda: list(SOUNDNESS_CATEGORIES))
    """Soundness categories the judge assigns, in the paper's order."""
    n_case_studies: int = 5
    """Rules per category in the Table 2-style case-study table (highest probability first)."""
    null_twin: Optional[str] = None
    """The null twin's run (same architecture, random weights, same text: `control=null_twin`):
    a run name beside this run (`null_model`) or a run directory. When set, sal.json also
    holds ΔSAL = SAL(this run) - SAL(null twin) with its CI and one-sided p-value; the
    twin must be evaluated first."""

    def __post_init__(self) -> None:
        coerce_choices(self, "evaluate")
        if self.n_rules_per_arity < 1:
            raise ValueError(
                f"evaluate.n_rules_per_arity={self.n_rules_per_arity}: must be >= 1."
            )
        if self.bins < 2 or any(b < 2 for b in self.report_bins):
            raise ValueError(
                f"evaluate.bins={self.bins}, report_bins={list(self.report_bins)}: "
                "every bin count must be >= 2."
            )
        if self.n_bootstrap < 1 or self.n_permutations < 1:
            raise ValueError(
                f"evaluate.n_bootstrap={self.n_bootstrap}, n_permutations="
                f"{self.n_permutations}: both must be >= 1 (1000 is a good default)."
            )
        if not 0 < self.ci_level < 1:
            raise ValueError(f"evaluate.ci_level={self.ci_level}: must be in (0, 1), e.g. 0.95.")
        if len(set(self.categories)) < 2:
            raise ValueError(
                f"evaluate.categories={list(self.categories)}: need at least 2 distinct ones."
            )
        if self.n_case_studies < 0:
            raise ValueError(f"evaluate.n_case_studies={self.n_case_studies}: must be >= 0.")


@dataclass
class WorldConfig:
    """A planted world: synthetic per-sample layer counts with rules whose truth is known.

    Every planted relation has premise features (1 or 2) and a conclusion feature, all
    distinct from every other relation's. In a fraction ``trigger_rate`` of the samples the
    premises fire together (each in 2..n_layers layers); then, with the relation's strength
    pi, the conclusion fires in fewer layers than every premise, which is what the counting
    rule ``a_p > a_q > 0`` looks for. Otherwise the conclusion keeps its own background
    activity. The strength pi of a rule is ``(1 - s) * u + s * target``: ``u`` is drawn from
    ``agnostic_strength`` for every kind alike, ``target`` is the kind's own strength and
    ``s`` is ``separation`` (forced to 0 in the agnostic world).
    """

    mode: WorldMode = WorldMode.aware
    """aware (the kinds get different strengths, scaled by separation) or agnostic (all kinds
    share one strength distribution; separation is ignored)."""
    separation: float = 1.0
    """In [0, 1]: 0 makes an aware world agnostic, 1 gives every kind its full target
    strength."""
    n_samples: int = 2000
    """Samples (one layer-count vector each), like the rule set's 3,267 questions."""
    n_features: int = 2000
    """Features C, planted and background together."""
    n_layers: int = 8
    """Monitored layers L; layer counts are integers in 0..L."""
    n_planted_per_kind: int = 60
    """Planted rules per soundness kind (Strict, Plausible, No)."""
    two_premise_fraction: float = 0.5
    """Fraction of each kind's planted rules with two premises (the rest have one)."""
    trigger_rate: float = 0.05
    """Per-sample probability that a planted relation's premises fire (together)."""
    conclusion_base_rate: List[float] = field(default_factory=lambda: [0.05, 0.2])
    """[low, high]: each conclusion fires on its own, independently of its premises, with a
    rate drawn uniformly from this range."""
    strict_strength: float = 1.0
    """Target strength of strict rules: the conclusion follows whenever the premises fire."""
    plausible_strength: List[float] = field(default_factory=lambda: [0.6, 0.9])
    """[low, high]: target strengths of plausible rules, drawn uniformly per rule."""
    noise_strength: float = 0.0
    """Target strength of noise rules: 0 leaves the conclusion independent of the premises."""
    agnostic_strength: List[float] = field(default_factory=lambda: [0.6, 0.9])
    """[low, high]: the strength every kind shares at separation 0 (an agnostic model treats
    all rules like heuristics)."""
    background_active: float = 20.0
    """Mean number of background features active per sample."""
    zipf_exponent: float = 1.1
    """Background feature popularity falls as rank**-zipf_exponent."""
    count_scope: CountScope = CountScope.all
    """Features the rule counter sees: all (realistic, slower) or planted (only the planted
    features; the planted rules' counts are identical either way)."""
    min_premise_count: int = 20
    """Passed to the rule counter. Planted premises fire together in about
    trigger_rate * n_samples samples (100 by default), so this only prunes premise sets that
    co-occur by chance, as the production filter does."""
    seed: int = 0
    """Seed of the whole world."""

    def __post_init__(self) -> None:
        coerce_choices(self, "world")
        if not 0 <= self.separation <= 1:
            raise ValueError(f"world.separation={self.separation}: must be in [0, 1].")
        if self.n_layers < 2:
            raise ValueError(
                f"world.n_layers={self.n_layers}: need >= 2 so a conclusion can fire in fewer "
                "layers than its premises."
            )
        if self.n_samples < 1 or self.n_planted_per_kind < 1:
            raise ValueError(
                f"world.n_samples={self.n_samples}, n_planted_per_kind="
                f"{self.n_planted_per_kind}: both must be >= 1."
            )
        if not 0 <= self.two_premise_fraction <= 1:
            raise ValueError(
                f"world.two_premise_fraction={self.two_premise_fraction}: must be in [0, 1]."
            )
        if not 0 < self.trigger_rate <= 1:
            raise ValueError(f"world.trigger_rate={self.trigger_rate}: must be in (0, 1].")
        _check_range("world.conclusion_base_rate", self.conclusion_base_rate, 0.0, 1.0)
        _check_range("world.plausible_strength", self.plausible_strength, 0.0, 1.0)
        _check_range("world.agnostic_strength", self.agnostic_strength, 0.0, 1.0)
        for name in ("strict_strength", "noise_strength"):
            if not 0 <= getattr(self, name) <= 1:
                raise ValueError(f"world.{name}={getattr(self, name)}: must be in [0, 1].")
        if self.min_premise_count < 1:
            raise ValueError(
                f"world.min_premise_count={self.min_premise_count}: must be >= 1."
            )
        if self.background_active < 0 or self.zipf_exponent <= 0:
            raise ValueError(
                f"world.background_active={self.background_active} must be >= 0 and "
                f"zipf_exponent={self.zipf_exponent} > 0."
            )
        n_two = round(self.n_planted_per_kind * self.two_premise_fraction)
        needed = 3 * (self.n_planted_per_kind * 2 + n_two)
        if needed > self.n_features:
            raise ValueError(
                f"world.n_features={self.n_features} is too small: the planted rules need "
                f"{needed} distinct features; raise n_features or lower n_planted_per_kind."
            )


@dataclass
class PowerConfig:
    source: PowerSource = PowerSource.world
    """Where the rule probabilities come from: world (the planted world in `world=`) or run
    (a finished run's labelled rules, resampled; give analysis.run_dirs[0])."""
    n_grid: List[int] = field(
        default_factory=lambda: [25, 50, 75, 100, 150, 200, 300, 400, 600, 800, 1200, 1600]
    )
    """Labelled rules per category at which CI width and power are simulated."""
    delta: float = 0.05
    """SAL difference (bits) to detect; 0.05 is the Mistral-7B vs DeepSeek-Math-7B gap."""
    compare_separation: Optional[float] = None
    """source=world: a second world, like `world=` but with this separation, whose actual
    SAL difference from the first is the one to detect (delta is then ignored)."""
    target_power: float = 0.8
    """Power the recommended budget must reach."""
    alpha: float = 0.05
    """Two-sided significance level of the test of a SAL difference."""
    n_sim: int = 200
    """Simulated studies per grid point."""
    n_bootstrap: int = 200
    """Bootstrap replicates inside each simulated study (for its CI width)."""
    tokens_per_judgment: Optional[float] = None
    """Mean tokens (prompt + completion) per rule judgment; None takes the judge's tally from
    the run, and the cost is omitted when neither exists."""
    price_per_1k_tokens: float = 0.00219
    """Price in USD per 1,000 tokens (default: DeepSeek-R1 output price, 2.19 USD per 1M)."""

    def __post_init__(self) -> None:
        coerce_choices(self, "analysis.power")
        if not self.n_grid or min(self.n_grid) < 2:
            raise ValueError(
                f"analysis.power.n_grid={list(self.n_grid)}: give rule counts >= 2."
            )
        if self.delta <= 0:
            raise ValueError(f"analysis.power.delta={self.delta}: must be > 0 bits.")
        if not 0 < self.target_power < 1 or not 0 < self.alpha < 1:
            raise ValueError(
                f"analysis.power.target_power={self.target_power} and alpha={self.alpha} "
                "must both be in (0, 1)."
            )
        if self.n_sim < 10 or self.n_bootstrap < 10:
            raise ValueError(
                f"analysis.power.n_sim={self.n_sim}, n_bootstrap={self.n_bootstrap}: use at "
                "least 10 each (200 is a good default)."
            )
        if self.tokens_per_judgment is not None and self.tokens_per_judgment <= 0:
            raise ValueError(
                f"analysis.power.tokens_per_judgment={self.tokens_per_judgment}: must be > 0 "
                "or null."
            )
        if self.price_per_1k_tokens < 0:
            raise ValueError(
                f"analysis.power.price_per_1k_tokens={self.price_per_1k_tokens}: must be >= 0."
            )


@dataclass
class RobustnessConfig:
    """analysis=robustness: the pipeline for K crosscoder seeds (each with its null twin) and
    for other dictionary settings, then the seed spread and the sensitivity table."""

    seeds: List[int] = field(default_factory=lambda: [0, 1, 2])
    """Crosscoder seeds (K = their number): one Hydra multirun per stage over crosscoder.seed."""
    null_twin: bool = True
    """Also run each seed's null twin (control=null_twin), for the spread of ΔSAL."""
    bins: List[int] = field(default_factory=lambda: [10, 20, 50])
    """Histogram bin counts of the sensitivity table (from the seeds' judged samples)."""
    min_premise_counts: List[int] = field(default_factory=lambda: [1, 5, 10, 30])
    """The judged sample restricted to rules with count(P) >= each value: with count(P) of 1-3
    the smoothed probabilities take only a handful of values, so histograms spike. Values at
    or below the extraction's rules.min_premise_count change nothing (the table says so)."""
    target_l0: List[float] = field(default_factory=lambda: [12.0, 50.0])
    """Other dictionary sparsities (crosscoder.target_l0, a float like it: job directories are
    named by the resolved value, l0_12.0), first seed only; [] skips them."""
    n_features: List[int] = field(default_factory=lambda: [128, 512])
    """Other dictionary widths C (crosscoder.n_features), first seed only; [] skips them."""

    def __post_init__(self) -> None:
        if not self.seeds or len(set(self.seeds)) != len(self.seeds):
            raise ValueError(f"analysis.robustness.seeds={list(self.seeds)}: give one or more distinct seeds.")
        if any(b < 2 for b in self.bins):
            raise ValueError(f"analysis.robustness.bins={list(self.bins)}: every bin count must be >= 2.")
        if any(m < 1 for m in self.min_premise_counts):
            raise ValueError(f"analysis.robustness.min_premise_counts={list(self.min_premise_counts)}: must be >= 1.")
        if any(k < 1 for k in self.target_l0) or any(c < 1 for c in self.n_features):
            raise ValueError(f"analysis.robustness.target_l0={list(self.target_l0)}, n_features="
                             f"{list(self.n_features)}: must be >= 1.")


@dataclass
class AnalysisConfig:
    name: Analysis = Analysis.single
    """single (SAL of one run), compare (many runs vs post-RL accuracy), robustness (seeds and
    settings of the dictionary), validate (trained networks on a synthetic language), planted
    (planted layer counts: the plumbing) or power (judge budget)."""
    run_dirs: List[str] = field(default_factory=list)
    """Run directories whose sal.json enter the comparison (or, for power with
    source=run, whose labelled rules are resampled)."""
    multirun_dir: Optional[str] = None
    """A Hydra multirun folder; every run below it with a sal.json is added to run_dirs."""
    sal_csv: Optional[str] = None
    """CSV with model,sal columns used instead of run directories; `paper` loads the
    packaged approximate values from the paper."""
    accuracy_csv: Optional[str] = None
    """CSV of post-RL accuracies in % (a model column plus benchmark columns); None uses the
    packaged SimpleRL-Zoo table."""
    accuracy_column: str = "avg"
    """Accuracy column that defines the error rate 1 - acc/100 for the fit."""
    benchmarks: Optional[List[str]] = None
    """Columns of the Spearman table; None uses Table 1's benchmarks."""
    separations: List[float] = field(
        default_factory=lambda: [0.0, 0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0]
    )
    """validate: planted separations swept for the SAL-vs-separation figure (dense near 0,
    where the paper's models lie: SAL 0.06-0.22 bits)."""
    n_seeds: int = 3
    """validate: worlds per separation (seeds world.seed, world.seed + 1, ...)."""
    power: PowerConfig = field(default_factory=PowerConfig)
    """Settings of analysis=power."""
    metric: Metric = Metric.sal
    """compare: sal, or delta_sal (SAL minus the null twin's, from runs evaluated with
    evaluate.null_twin): the gap speaks about the model, not its text."""
    robustness: RobustnessConfig = field(default_factory=RobustnessConfig)
    """Settings of analysis=robustness."""
    network: NetworkValidationConfig = field(default_factory=NetworkValidationConfig)
    """Settings of analysis=validate: the synthetic language, the two tiny transformers (sound
    and shuffled text) and the sizes of their crosscoders and statistics
    (sal.network_validation). analysis=planted is the planted-counts check (world=)."""

    def __post_init__(self) -> None:
        coerce_choices(self, "analysis")
        if self.name == "compare" and not (self.run_dirs or self.multirun_dir or self.sal_csv):
            raise ValueError(
                "analysis=compare needs models: set analysis.run_dirs=[...], "
                "analysis.multirun_dir=..., or analysis.sal_csv=paper."
            )
        if any(not 0 <= s <= 1 for s in self.separations) or not self.separations:
            raise ValueError(
                f"analysis.separations={list(self.separations)}: give values in [0, 1]."
            )
        if self.n_seeds < 1:
            raise ValueError(f"analysis.n_seeds={self.n_seeds}: must be >= 1.")
        if self.name == "compare" and self.metric == "delta_sal" and not (self.run_dirs or self.multirun_dir):
            raise ValueError("analysis.metric=delta_sal needs runs evaluated with evaluate.null_twin "
                             "(analysis.run_dirs=[...] or analysis.multirun_dir=...): the paper's table has no ΔSAL.")
        if self.name == "power" and self.power.source == "run" and not self.run_dirs:
            raise ValueError("analysis.power.source=run needs analysis.run_dirs=[<finished run>].")
