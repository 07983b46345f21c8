"""Constructors of the three kinds of judge items, with their stable keys and prompts."""

from __future__ import annotations

from typing import Sequence

from sal.judge.prompts import explain_prompt, rule_prompt, verify_prompt
from sal.judge.replay import explain_key, rule_key, verify_key
from sal.judge.types import EXPLAIN, RULE, VERIFY, JudgeItem, Span


def explain_item(feature: int, spans: Sequence[Span]) -> JudgeItem:
    """Figure 7 for one feature (pass its top-15 spans, strongest first)."""
    spans = tuple(spans)
    return JudgeItem(explain_key(feature), EXPLAIN, explain_prompt([s.text for s in spans]), spans=spans)


def verify_item(feature: int, summary: str, spans: Sequence[Span]) -> JudgeItem:
    """Figure 8 for one feature (pass its summary and top-30 spans)."""
    spans = tuple(spans)
    return JudgeItem(
        verify_key(feature), VERIFY, verify_prompt(summary, [s.text for s in spans]), spans=spans, summary=summary
    )


def rule_item(p1: int, p2: int, q: int, premises: Sequence[str], conclusion: str) -> JudgeItem:
    """Figure 9 (p2 == -1, one premise) or Figure 10 (two premises); the texts are the
    features' explanations."""
    n_premise = 1 if int(p2) < 0 else 2
    if len(premises) != n_premise:
        raise ValueError(f"rule ({p1},{p2},{q}) has {n_premise} premise(s) but {len(premises)} texts were given")
    return JudgeItem(
        rule_key(p1, p2, q), RULE, rule_prompt(list(premises), conclusion),
        premises=tuple(premises), conclusion=conclusion,
    )
