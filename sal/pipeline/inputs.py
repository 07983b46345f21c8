"""Later stages check that they read the run they think they read.

A crosscoder's features describe the activations it was trained on: one model, one set of
layers, one corpus (its sources, sample, generation settings) cut at one document length.
`extract_rules.py` and `evaluate.py` rebuild the corpus and the rule set from their own config,
so a setting that differs from the training's (a forgotten `experiment=paper`, another
`data.max_questions`) would silently pair a crosscoder with text it never saw. The export's
`config.json` keeps the training's resolved config; these checks compare against it before
any model loads.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path
from typing import Any, Iterable, List, Tuple

from sal.errors import ConfigError

log = logging.getLogger("sal")

CHECKED_SETTINGS: Tuple[str, ...] = (
    # the subject model (its weights, and its dtype: the corpus's responses depend on it)
    "model.name", "model.source", "model.hub_id", "model.revision", "model.local_path", "model.init", "model.seed",
    "model.dtype",
    "layers.indices",
    # the corpus: which questions, and how the responses were written
    "data.name", "data.sources", "data.max_questions", "data.max_question_chars", "data.seed", "data.responses_from",
    "data.generation.backend", "data.generation.prompt", "data.generation.max_new_tokens",
    "data.generation.temperature", "data.generation.top_p", "data.generation.seed", "data.generation.batch_size",
    # the one document length
    "data.max_doc_tokens",
)
"""Dotted settings a later stage must share with the training run of its crosscoder."""

OVERRIDE = "accept_mismatch=true"


def _lookup(tree: Any, dotted: str) -> Tuple[bool, Any]:
    node = tree
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return False, None
        node = node[part]
    return True, node


def _normalise(value: Any) -> Any:
    if isinstance(value, (list, tuple)):
        return [_normalise(v) for v in value]
    return value


def training_config(export_dir: Path) -> dict:
    """The training's resolved config, as saved in the crosscoder export ({} when absent)."""
    path = Path(export_dir) / "config.json"
    if not path.exists():
        return {}
    return json.loads(path.read_text()).get("resolved_config") or {}


def mismatches(current: dict, trained: dict, settings: Iterable[str] = CHECKED_SETTINGS) -> List[Tuple[str, Any, Any]]:
    """(setting, training's value, this run's value) for every checked setting both configs
    have and that differ. A setting the training's config lacks (an older export) is not
    compared."""
    out = []
    for dotted in settings:
        had, before = _lookup(trained, dotted)
        has, now = _lookup(current, dotted)
        if had and has and _normalise(before) != _normalise(now):
            out.append((dotted, before, now))
    return out


def check_against_training(typed, export_dir: Path, stage: str) -> None:
    """Refuse (ValueError) when this stage's settings differ from the training run's; with
    accept_mismatch=true, warn and go on."""
    trained = training_config(export_dir)
    if not trained:
        return
    diffs = mismatches(dataclasses.asdict(typed), trained)
    if not diffs:
        return
    listed = "; ".join(f"{k}: trained with {before!r}, this run has {now!r}" for k, before, now in diffs)
    if typed.accept_mismatch:
        log.warning("%s: settings differ from the crosscoder's training run (%s); going on (%s)", stage, listed, OVERRIDE)
        return
    first = diffs[0]
    raise ConfigError(
        f"{stage}: the crosscoder in {export_dir} was trained with other settings than this run's: {listed}. "
        f"Its features describe the training's activations and text, so this stage would rebuild a different "
        f"corpus and rule set for it. Rerun with the training's settings (e.g. {first[0]}={_override_value(first[1])}, "
        f"or the same experiment=/data= group as train.py), point run_dir= at a crosscoder trained with these, "
        f"or pass {OVERRIDE} to go on anyway.")


def _override_value(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(str(v) for v in value) + "]"
    return str(value)
