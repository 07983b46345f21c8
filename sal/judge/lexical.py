"""Deterministic judge without a model: lexical patterns at the activating token.

explain: the longest token n-gram (n <= `lexical_max_ngram`) ending at the activating
  token that ends at least `lexical_min_share` of the explained spans becomes
  `Exact pattern: "..."`; without one the feature is "Cannot Tell".
verify: the share of the verification spans that contain the summary's quoted pattern(s)
  anywhere (case-insensitive, whitespace-normalised), mapped to the paper's Figure 8
  thresholds: >= 85% Yes, >= 65% Probably, >= 40% Maybe, else No.
rule: declined (status "declined"): soundness of a rule is a semantic question that token
  patterns cannot answer; use openai, hf_local or replay for rules.
"""

from __future__ import annotations

import re
from collections import Counter
from typing import Optional, Sequence

from sal.judge.base import Judge
from sal.judge.prompts import render_span
from sal.judge.types import DECLINED, EXPLAIN, OK, RULE, VERIFY, JudgeItem, Judgment, Span

# Figure 8: "Yes/Probably/Maybe indicates at least 85%/65%/40% text spans include the feature".
DECISION_THRESHOLDS = (("Yes", 0.85), ("Probably", 0.65), ("Maybe", 0.40))


def decision_for_share(share: float) -> str:
    for decision, threshold in DECISION_THRESHOLDS:
        if share >= threshold - 1e-12:
            return decision
    return "No"


def _norm(text: str) -> str:
    return re.sub(r"\s+", " ", render_span(text).lower()).strip()


def _token_key(token: str) -> str:
    key = _norm(token)
    return key if key else render_span(token)  # a whitespace token keeps its identity


def shared_suffix(spans: Sequence[Span], max_ngram: int, min_share: float) -> Optional[tuple[str, float]]:
    """(pattern, share) of the longest most-common token suffix; None below min_share.
    The share of the most common n-gram suffix cannot grow with n (each one extends an
    (n-1)-gram suffix), so the longest n that still reaches min_share is kept."""
    spans = [s for s in spans if s.tokens]
    if not spans:
        return None
    best: Optional[tuple[str, float]] = None
    for n in range(1, max_ngram + 1):
        keys = [tuple(_token_key(t) for t in s.tokens[-n:]) for s in spans if len(s.tokens) >= n]
        if not keys:
            break
        key, count = Counter(keys).most_common(1)[0]
        share = count / len(spans)
        if share < min_share:
            break
        example = next(s for s in spans if len(s.tokens) >= n and tuple(_token_key(t) for t in s.tokens[-n:]) == key)
        pattern = "".join(example.tokens[-n:]).strip() or render_span("".join(example.tokens[-n:]))
        best = (render_span(pattern), share)
    return best


_QUOTED = re.compile(r"\"([^\"]+)\"|“([^”]+)”")


def summary_patterns(summary: str) -> list[str]:
    """The quoted patterns of a summary ('Exact pattern: "x"', Semantic exemplars)."""
    return [next(g for g in m.groups() if g) for m in _QUOTED.finditer(summary or "")]


def _pattern_regex(pattern: str) -> re.Pattern:
    # A skip-gram "xxx ... yyy" matches xxx followed later by yyy.
    parts = [re.escape(_norm(p)) for p in re.split(r"\s*(?:\.\.\.|…)\s*", pattern) if _norm(p)]
    return re.compile(".*?".join(parts)) if parts else re.compile(re.escape(_norm(pattern)))


def share_containing(spans: Sequence[Span], patterns: Sequence[str]) -> float:
    regexes = [_pattern_regex(p) for p in patterns]
    hits = sum(any(r.search(_norm(s.text)) for r in regexes) for s in spans)
    return hits / len(spans) if spans else 0.0


class LexicalJudge(Judge):
    backend = "lexical"

    async def _judge_one(self, item: JudgeItem) -> Judgment:
        c = self.config
        if item.task == EXPLAIN:
            found = shared_suffix(item.spans, c.lexical_max_ngram, c.lexical_min_share)
            if found is None:
                return Judgment(item.key, item.task, OK, "cannot_tell", "Cannot Tell",
                                "<summary> Cannot Tell </summary>", None, 1, False)
            pattern, share = found
            text = f'Exact pattern: "{pattern}"'
            raw = f"<summary> {text} </summary> (ends {share:.0%} of {len(item.spans)} spans)"
            return Judgment(item.key, item.task, OK, "exact", text, raw, None, 1, False)
        if item.task == VERIFY:
            patterns = summary_patterns(item.summary or "")
            if not patterns or not item.spans:
                return Judgment(item.key, item.task, DECLINED, None, None, None,
                                "lexical verification needs spans and a summary with a quoted pattern, "
                                f"got {item.summary!r}", 0, False)
            share = share_containing(item.spans, patterns)
            decision = decision_for_share(share)
            raw = f"Final Decision: [[{decision}]] ({share:.0%} of {len(item.spans)} spans contain the pattern)"
            return Judgment(item.key, item.task, OK, decision, None, raw, None, 1, False)
        if item.task == RULE:
            return Judgment(item.key, item.task, DECLINED, None, None, None,
                            "the lexical judge cannot judge rule soundness; use judge.backend=openai, "
                            "hf_local or replay for rules", 0, False)
        raise ValueError(f"unknown judge task {item.task!r}")
