"""Rule judging (paper Appendix D, Figures 9 and 10): the judge's soundness category
(Strict / Plausible / No) and rationale for each rule, from its features' explanations
(sal.feature_explanations). Used by evaluate.py's judged sample, the planted-counts check,
the network validation and the agreement with human labels (sal.human_agreement)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Mapping, Optional

from sal.faults import kill_point
from sal.judge import OK, Judge, Judgment, rule_item

log = logging.getLogger(__name__)


def _explanation_map(explanations: Any) -> dict[int, str]:
    if isinstance(explanations, (str, Path)):
        import pandas as pd

        explanations = pd.read_parquet(explanations)
    if isinstance(explanations, Mapping):
        return {int(k): v for k, v in explanations.items() if isinstance(v, str) and v.strip()}
    frame = explanations
    return {int(f): e for f, e in zip(frame["feature"], frame["explanation"]) if isinstance(e, str) and e.strip()}


def judge_rules(rules_df: Any, explanations: Any, judge: Judge, progress: bool = True) -> Any:
    """Soundness of each rule: a copy of `rules_df` (columns p1, p2, q; p2 == -1 for a
    one-premise rule) with `category` ("Strict"/"Plausible"/"No", null when not labelled),
    `rationale`, `judge_status` and `judge_error` added, in the same row order.

    explanations: the explanations DataFrame (feature, explanation), its parquet path, or a
    {feature: explanation} mapping. A rule naming a feature without an explanation is not
    sent to the judge and is reported with judge_status "failed"."""
    explained = _explanation_map(explanations)
    out = rules_df.copy()
    keys_rows: dict[tuple[int, int, int], Optional[Any]] = {}
    missing: dict[tuple[int, int, int], str] = {}
    items = []
    for p1, p2, q in zip(out["p1"].astype(int), out["p2"].astype(int), out["q"].astype(int)):
        rule = (int(p1), int(p2), int(q))
        if rule in keys_rows or rule in missing:
            continue
        feats = [rule[0], rule[2]] + ([rule[1]] if rule[1] >= 0 else [])
        lacking = [f for f in feats if f not in explained]
        if lacking:
            missing[rule] = f"no explanation for feature(s) {lacking}; only explained features can be judged"
            continue
        premises = [explained[rule[0]]] + ([explained[rule[1]]] if rule[1] >= 0 else [])
        items.append(rule_item(rule[0], rule[1], rule[2], premises, explained[rule[2]]))
        keys_rows[rule] = None
    kill_point("judge_rules.start")
    judgments = judge.judge(items, progress=progress, desc="judge rules")
    kill_point("judge_rules.done")
    by_rule = dict(zip(list(keys_rows), judgments))

    categories, rationales, statuses, errors = [], [], [], []
    for p1, p2, q in zip(out["p1"].astype(int), out["p2"].astype(int), out["q"].astype(int)):
        rule = (int(p1), int(p2), int(q))
        j: Optional[Judgment] = by_rule.get(rule)
        if j is None:
            categories.append(None); rationales.append(None); statuses.append("failed"); errors.append(missing[rule])
        else:
            categories.append(j.label if j.ok else None)
            rationales.append(j.text if j.ok else None)
            statuses.append(j.status)
            errors.append(j.error)
    out["category"], out["rationale"], out["judge_status"], out["judge_error"] = categories, rationales, statuses, errors
    n_bad = sum(s != OK for s in statuses)
    if n_bad:
        log.warning("%d of %d rules have no soundness label (judge_status != ok)", n_bad, len(statuses))
    return out
