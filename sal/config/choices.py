"""Every closed set of choices in the project, defined once.

Config fields typed with one of these enums are checked by OmegaConf when Hydra composes the
config (``crosscoder.arch=reluu`` fails there, naming the allowed values), and by
:func:`coerce_choices` when a config is built in Python. They are ``StrEnum``: a member
equals, hashes, formats and JSON-encodes as its value, so code compares them with plain
strings. Member names equal their values because OmegaConf matches YAML strings to names.
"""

from __future__ import annotations

import dataclasses
import typing
from enum import Enum, StrEnum

SOUNDNESS_CATEGORIES = ("Strict", "Plausible", "No")
"""The judge's rule labels (Figure 10), in the paper's order: the SAL histograms' categories."""

VERIFICATION_DECISIONS = ("Yes", "Probably", "Maybe", "No")
"""The verifier's decisions on a feature's explanation (Figure 8), strongest first."""


def _choices(name: str, values: str, doc: str) -> type[StrEnum]:
    """A StrEnum whose members are named like their values (space-separated in ``values``)."""
    enum = StrEnum(name, {v: v for v in values.split()}, module=__name__)
    enum.__doc__ = doc
    return enum


Arch = _choices("Arch", "relu topk", "Crosscoder architecture: relu (the paper) | topk (TopK/BatchTopK + AuxK).")
DecoderNorm = _choices("DecoderNorm", "l2 l1", "Norm of decoder rows in the sparsity penalty.")
MseReduction = _choices("MseReduction", "sum mean", "Reduction of the crosscoder's reconstruction error.")
L0Unit = _choices("L0Unit", "features pairs", "What target_l0 counts per token.")
DecoderBiasInit = _choices("DecoderBiasInit", "mean zero", "Initial decoder bias.")
TopkMode = _choices("TopkMode", "token batch", "TopK per token or BatchTopK.")
CacheDtype = _choices("CacheDtype", "bfloat16 float16 float32", "dtype of cached activations.")
ModelDtype = _choices("ModelDtype", "auto float32 bfloat16 float16", "Weights dtype; auto: the hardware decides.")
ModelSource = _choices("ModelSource", "hub local gguf tiny", "Where the subject model's weights come from.")
ModelInit = _choices("ModelInit", "pretrained random", "pretrained, or random weights (the null twin).")
Accelerator = _choices("Accelerator", "auto cpu gpu cuda", "Lightning accelerator of crosscoder training.")
MatmulPrecision = _choices("MatmulPrecision", "highest high medium", "torch float32 matmul precision on GPU.")
WandbMode = _choices("WandbMode", "auto online offline disabled", "W&B mode; auto: online iff WANDB_API_KEY is set.")
GenerationBackend = _choices("GenerationBackend", "hf vllm", "What generates the corpus responses.")
ResponsesFrom = _choices("ResponsesFrom", "self pretrained", "Who writes the responses a model reads.")
Unfinished = _choices("Unfinished", "exclude include", "Rule-set responses that did not finish.")
JudgeBackend = _choices("JudgeBackend", "openai hf_local lexical replay", "Which judge answers the paper's prompts.")
ActivationUnit = _choices("ActivationUnit", "documents tokens", "What interpret.min_activations counts.")
Aggregation = _choices("Aggregation", "last_token any_token algorithm1",
                       "How a rule-set sample's activations become its layer counts (sal.rules.aggregate).")
LayerActivity = _choices("LayerActivity", "encoder cumulative",
                         "When a feature counts as active at a layer (sal.rules.aggregate).")
ExplanationLevel = _choices("ExplanationLevel", " ".join(VERIFICATION_DECISIONS[:3]),
                            "The weakest verification decision that keeps a feature in the rules.")
EmptyCategory = _choices("EmptyCategory", "error drop", "A soundness category without enough labelled rules.")
Analysis = _choices("Analysis", "single compare validate planted power robustness", "What evaluate.py does.")
Metric = _choices("Metric", "sal delta_sal", "What analysis=compare fits against.")
WorldMode = _choices("WorldMode", "aware agnostic", "Planted world: kinds planted apart, or alike.")
CountScope = _choices("CountScope", "planted all", "Features the planted world's rule counter sees.")
PowerSource = _choices("PowerSource", "world run", "Where analysis=power's rule probabilities come from.")
Unplanted = _choices("Unplanted", "no drop", "Network validation: rules between unrelated concepts.")
ConclusionNaming = _choices("ConclusionNaming", "word next_word",
                            "Network validation: the concept a rule's conclusion feature stands for.")


def coerce_choices(obj, prefix: str) -> None:
    """Turn every enum-typed field of the dataclass ``obj`` that holds a plain string into its
    member, or raise ``ValueError`` naming ``<prefix>.<field>``, the value and the choices.
    OmegaConf does this at composition; this covers configs built in Python."""
    hints = typing.get_type_hints(type(obj))
    for f in dataclasses.fields(obj):
        kind = hints.get(f.name)
        if not (isinstance(kind, type) and issubclass(kind, Enum)):
            continue
        value = getattr(obj, f.name)
        if isinstance(value, kind):
            continue
        try:
            setattr(obj, f.name, kind(value))
        except ValueError:
            raise ValueError(f"{prefix}.{f.name}={value!r}: choose one of "
                             f"{', '.join(m.value for m in kind)}.") from None


def override_choice_problem(schema: type, override: str) -> str | None:
    """Why a command-line ``key.path=value`` names no member of the enum that field takes
    (None when it does, or when the key is no enum field: Hydra judges those). Lets an
    entrypoint report a wrong choice as one line before Hydra composes; sweeps
    (``a,b``) are checked value by value, and interpolations or sweep functions are left to
    Hydra."""
    key, sep, value = override.partition("=")
    if not sep or key[:1] in "+~" or "." not in key or "$" in value or "(" in value:
        return None
    kind = schema
    for part in key.split("."):
        hints = typing.get_type_hints(kind) if dataclasses.is_dataclass(kind) else {}
        if part not in hints:
            return None
        kind = hints[part]
    if not (isinstance(kind, type) and issubclass(kind, Enum)):
        return None
    names = [m.name for m in kind]
    bad = [v for v in (v.strip().strip("'\"") for v in value.split(",")) if v not in names and v.lower() != "null"]
    return f"{key}={bad[0]!r}: choose one of {', '.join(names)}." if bad else None
