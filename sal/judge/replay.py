"""Judge that answers from a file: human labels, or another run's exported judgments.

Accepted files (.csv, or .jsonl/.json with one object per line). Each row answers one item,
identified by
- a `key` column ("rule/<p1>,<p2>,<q>", "explain/<feature>", "verify/<feature>"), or
- `p1`, `p2`, `q` columns (p2 = -1 or empty for one premise) -> a rule, or
- a `feature` column -> its explanation (column `explanation`/`summary`) and/or its
  decision (column `decision`).
The answer is either a raw judge reply (`response`/`raw` column, parsed like a live reply)
or the label itself: `category`/`label` (+ `rationale`) for rules, `decision`/`label` for
verification, `explanation`/`summary`/`text` for explanations. `export_judgments` writes
the format back. A key without a row is reported as failed, a row whose answer cannot be
read as unparseable; nothing is ever defaulted.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Iterable, Optional

from sal.config.judge import JudgeConfig
from sal.judge.base import Judge
from sal.judge.parse import DECISIONS, normalise_category, parse_answer, parse_summary
from sal.judge.types import EXPLAIN, FAILED, OK, RULE, UNPARSEABLE, VERIFY, JudgeItem, Judgment


def rule_key(p1: int, p2: int, q: int) -> str:
    return f"rule/{int(p1)},{int(p2)},{int(q)}"


def explain_key(feature: int) -> str:
    return f"explain/{int(feature)}"


def verify_key(feature: int) -> str:
    return f"verify/{int(feature)}"


def _blank(value) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value)) or (isinstance(value, str) and not value.strip())


def _first(row: dict, *names: str):
    lowered = {str(k).strip().lower(): v for k, v in row.items()}
    for name in names:
        value = lowered.get(name)
        if not _blank(value):
            return value
    return None


def read_rows(path: str | Path) -> list[dict]:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"replay file {path} does not exist (judge.replay_path)")
    if path.suffix.lower() in (".jsonl", ".json", ".ndjson"):
        rows = []
        with open(path, encoding="utf-8") as f:
            for n, line in enumerate(f, start=1):
                if line.strip():
                    try:
                        rows.append(json.loads(line))
                    except ValueError as err:
                        raise ValueError(f"{path}:{n} is not a JSON object ({err})") from None
        return rows
    if path.suffix.lower() in (".csv", ".tsv"):
        import pandas as pd

        frame = pd.read_csv(path, sep="\t" if path.suffix.lower() == ".tsv" else ",", dtype=str, keep_default_na=False)
        return frame.to_dict("records")
    raise ValueError(f"replay file {path} must be .csv, .tsv or .jsonl")


def _row_answers(row: dict) -> Iterable[tuple[str, dict]]:
    """(key, answer) pairs stated by one row; answer has "raw" or "label"/"text"."""
    status = _first(row, "status")
    if status is not None and str(status).strip().lower() != OK:
        return  # an item the replayed run did not label: replaying it must fail, not guess
    raw = _first(row, "response", "raw")
    key = _first(row, "key")
    if key is not None:
        task = str(key).split("/", 1)[0]
        label = _first(row, "label", "category", "decision")
        text = _first(row, "text", "rationale", "relation/intuition", "explanation", "summary")
        if task == EXPLAIN and text is None:
            text = label
        yield str(key).strip(), {"raw": raw, "label": label, "text": text}
        return
    if _first(row, "p1") is not None and _first(row, "q") is not None:
        p2 = _first(row, "p2")
        key = rule_key(int(float(_first(row, "p1"))), -1 if p2 is None else int(float(p2)), int(float(_first(row, "q"))))
        yield key, {"raw": raw, "label": _first(row, "category", "label"),
                    "text": _first(row, "rationale", "relation/intuition", "text")}
        return
    feature = _first(row, "feature")
    if feature is not None:
        feature = int(float(feature))
        explanation = _first(row, "explanation", "summary")
        if explanation is not None:
            yield explain_key(feature), {"raw": None, "label": None, "text": explanation}
        decision = _first(row, "decision")
        if decision is not None:
            yield verify_key(feature), {"raw": None, "label": decision, "text": None}
        return
    raise ValueError(f"replay row names no item (need key, p1/p2/q or feature): {row}")


def answer_of(task: str, answer: dict) -> Optional[tuple[str, Optional[str]]]:
    """(label, text) from a replay answer, or None when it cannot be read."""
    if answer.get("raw") is not None:
        return parse_answer(task, str(answer["raw"]))
    label, text = answer.get("label"), answer.get("text")
    if task == RULE:
        category = normalise_category(label)
        return None if category is None else (category, "" if text is None else str(text))
    if task == VERIFY:
        decision = str(label).strip().strip("[]").capitalize() if label is not None else None
        return (decision, None) if decision in DECISIONS else None
    if task == EXPLAIN:
        summary = parse_summary(f"<summary> {text} </summary>") if text is not None else None
        return None if summary is None else (summary.kind, summary.text)
    raise ValueError(f"unknown judge task {task!r}")


class ReplayJudge(Judge):
    backend = "replay"

    def __init__(self, config: JudgeConfig):
        super().__init__(config)
        self.path = Path(config.replay_path)
        self.answers: dict[str, dict] = {}
        for row in read_rows(self.path):
            for key, answer in _row_answers(row):
                if key in self.answers and self.answers[key] != answer:
                    raise ValueError(f"replay file {self.path} answers {key!r} twice, differently: "
                                     f"{self.answers[key]} vs {answer}; keep one row per item")
                self.answers[key] = answer

    @property
    def model_id(self) -> str:
        return f"replay:{Path(self.config.replay_path).name}"

    async def _judge_one(self, item: JudgeItem) -> Judgment:
        answer = self.answers.get(item.key)
        if answer is None:
            return Judgment(item.key, item.task, FAILED, None, None, None,
                            f"no answer for {item.key!r} in replay file {self.path}", 0, False)
        parsed = answer_of(item.task, answer)
        raw = answer.get("raw") if answer.get("raw") is not None else json.dumps(answer, default=str)
        if parsed is None:
            return Judgment(item.key, item.task, UNPARSEABLE, None, None, raw,
                            f"replay answer for {item.key!r} cannot be read: {answer}", 1, True)
        return Judgment(item.key, item.task, OK, parsed[0], parsed[1], raw, None, 1, True)


def export_judgments(judgments: Iterable[Judgment], path: str | Path) -> Path:
    """Write judgments as JSONL readable by the replay backend (labelled ones carry their
    label; the others carry status and error only, so replaying reports them again)."""
    from sal.atomic import atomic_path

    path = Path(path)
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8") as f:
        for j in judgments:
            row = {"key": j.key, "task": j.task, "status": j.status, "error": j.error}
            if j.status == OK:
                row.update(label=j.label, text=j.text)
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    return path
