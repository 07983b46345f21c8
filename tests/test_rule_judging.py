"""sal.rule_judging: a soundness label per rule, gaps reported."""

from __future__ import annotations

import pandas as pd

from sal.config.judge import JudgeConfig
from sal.judge import make_judge
from sal.rule_judging import judge_rules


def test_judge_rules_fills_figures_and_reports_gaps(tmp_path):
    human = tmp_path / "labels.csv"
    human.write_text("p1,p2,q,category,rationale\n1,-1,2,Strict,def\n1,3,2,Plausible,heur\n")
    judge = make_judge(JudgeConfig(backend="replay", replay_path=str(human)))
    explanations = pd.DataFrame({"feature": [1, 2, 3], "explanation": ['Exact pattern: "="', "Semantic: sums", None]})
    rules = pd.DataFrame({"p1": [1, 1, 1, 1], "p2": [-1, 3, -1, 4], "q": [2, 2, 2, 2], "prob": [0.9, 0.5, 0.9, 0.1]})
    out = judge_rules(rules, explanations, judge, progress=False)
    assert list(out.prob) == [0.9, 0.5, 0.9, 0.1]  # order and columns kept
    assert [c if isinstance(c, str) else None for c in out.category] == ["Strict", None, "Strict", None]
    assert list(out.judge_status) == ["ok", "failed", "ok", "failed"]
    assert "feature(s) [3]" in out.judge_error[1] and "feature(s) [4]" in out.judge_error[3]
    assert judge.tally.n_items == 1  # the duplicate rule asked once; unexplained ones never
