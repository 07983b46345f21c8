"""Agreement between human soundness labels and the judge's (paper Section 3: raw agreement
and Cohen's kappa), and evaluate.human_labels' use of it: judge the human-labelled rules too
and compare."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from sal.judge import CATEGORIES, OK
from sal.judge.parse import normalise_category
from sal.rule_judging import judge_rules


@dataclass
class Agreement:
    n: int
    """Rules labelled by both the human and the judge."""
    raw_agreement: float
    kappa: float
    """Cohen's kappa; NaN when chance agreement is 1 (both raters used one same label)."""
    confusion: Any
    """DataFrame: rows human category, columns judge category, counts."""
    n_unmatched: int
    """Human-labelled rules the judge did not label (absent or not ok), left out."""


def cohen_kappa(a: Sequence[str], b: Sequence[str], labels: Sequence[str] = CATEGORIES) -> tuple[float, float]:
    """(raw agreement, Cohen's kappa) of two equally long label sequences:
    kappa = (p_o - p_e) / (1 - p_e), p_e = sum_c p_a(c) p_b(c)."""
    if len(a) != len(b):
        raise ValueError(f"label sequences differ in length: {len(a)} vs {len(b)}")
    n = len(a)
    if n == 0:
        return math.nan, math.nan
    p_o = sum(x == y for x, y in zip(a, b)) / n
    p_e = sum((sum(x == c for x in a) / n) * (sum(y == c for y in b) / n) for c in labels)
    kappa = (p_o - p_e) / (1 - p_e) if p_e < 1 else math.nan
    return p_o, kappa


def agreement(human_csv: Any, judged: Any) -> Agreement:
    """Agreement between human soundness labels and the judge's.

    human_csv: CSV path or DataFrame with p1, q, optionally p2 (missing/-1 = one premise)
    and the human label in `category`, `label` or `human` (Strict/Plausible/No; Noise = No).
    judged: judge_rules' output (p1, p2, q, category[, judge_status])."""
    import pandas as pd

    human = pd.read_csv(human_csv) if isinstance(human_csv, (str, Path)) else human_csv.copy()
    label_col = next((c for c in ("category", "label", "human") if c in human.columns), None)
    if label_col is None or "p1" not in human.columns or "q" not in human.columns:
        raise ValueError(f"human labels need columns p1, q (p2 optional) and category/label/human; got {list(human.columns)}")
    if "p2" not in human.columns:
        human["p2"] = -1
    human["p2"] = human["p2"].fillna(-1)
    h_labels = {}
    for i, (p1, p2, q, lab) in enumerate(zip(human.p1, human.p2, human.q, human[label_col])):
        cat = normalise_category(lab)
        if cat is None:
            raise ValueError(f"human label {lab!r} in row {i} is not Strict/Plausible/No (or Noise)")
        h_labels[(int(p1), int(p2), int(q))] = cat
    j_labels = {}
    ok = judged["judge_status"] == OK if "judge_status" in judged.columns else judged["category"].notna()
    for p1, p2, q, cat, good in zip(judged.p1, judged.p2, judged.q, judged.category, ok):
        if good and normalise_category(cat) is not None:
            j_labels[(int(p1), int(p2), int(q))] = normalise_category(cat)
    common = [r for r in h_labels if r in j_labels]
    a = [h_labels[r] for r in common]
    b = [j_labels[r] for r in common]
    raw, kappa = cohen_kappa(a, b)
    confusion = pd.DataFrame(0, index=pd.Index(CATEGORIES, name="human"), columns=pd.Index(CATEGORIES, name="judge"))
    for x, y in zip(a, b):
        confusion.loc[x, y] += 1
    return Agreement(len(common), raw, kappa, confusion, len(h_labels) - len(common))


def agreement_with_human_labels(path: str, explanations: Any, judge) -> dict:
    """Judge the human-labelled rules in the CSV at ``path`` too and compare (raw agreement,
    Cohen's kappa), as sal.json's ``human_agreement``."""
    import pandas as pd

    human = pd.read_csv(path)
    if "p2" not in human.columns:
        human["p2"] = -1
    human["p2"] = human["p2"].fillna(-1).astype(int)
    judged = judge_rules(human[["p1", "p2", "q"]].astype(int), explanations, judge)
    agr = agreement(human, judged)
    return {"n": agr.n, "raw_agreement": agr.raw_agreement, "kappa": agr.kappa, "n_unmatched": agr.n_unmatched,
            "confusion": agr.confusion.to_dict()}
