"""The LLM judge: explains and verifies features (Figures 7, 8) and judges rule soundness
(Figures 9, 10) through one interface with four backends (openai, hf_local, lexical,
replay). Build one with `make_judge(JudgeConfig(...))`."""

from sal.judge.base import Judge, TransportError, run_sync
from sal.judge.cache import JudgeCache, cache_key
from sal.judge.factory import make_judge
from sal.judge.items import explain_item, rule_item, verify_item
from sal.judge.parse import (
    CATEGORIES,
    DECISIONS,
    RuleVerdict,
    Summary,
    parse_answer,
    parse_decision,
    parse_rule_verdict,
    parse_summary,
)
from sal.judge.replay import explain_key, export_judgments, rule_key, verify_key
from sal.judge.types import (
    DECLINED,
    EXPLAIN,
    FAILED,
    OK,
    RULE,
    UNPARSEABLE,
    VERIFY,
    JudgeItem,
    JudgeTally,
    Judgment,
    Span,
)

__all__ = [
    "CATEGORIES", "DECISIONS", "DECLINED", "EXPLAIN", "FAILED", "OK", "RULE", "UNPARSEABLE", "VERIFY",
    "Judge", "JudgeCache", "JudgeItem", "JudgeTally", "Judgment", "RuleVerdict", "Span", "Summary",
    "TransportError", "cache_key", "explain_item", "explain_key", "export_judgments", "make_judge",
    "parse_answer", "parse_decision", "parse_rule_verdict", "parse_summary", "preflight", "rule_item", "rule_key",
    "run_sync", "verify_item", "verify_key",
]


def preflight(config) -> None:
    """Start-up check of the configured judge (key set, URL well-formed, server reachable);
    raises a sal.errors.UserError naming the fix. See sal.judge.startup.preflight."""
    from sal.judge.startup import preflight as check  # httpx is imported only when needed

    check(config)
