"""sal.human_agreement: raw agreement and Cohen's kappa between human and judge labels."""

from __future__ import annotations

import math

import pandas as pd
import pytest

from sal.config.judge import JudgeConfig
from sal.human_agreement import agreement, agreement_with_human_labels, cohen_kappa
from sal.judge import make_judge


def test_cohen_kappa_hand_computed():
    human = ["Strict", "Strict", "Plausible", "No", "No", "Plausible", "Strict", "No"]
    judge = ["Strict", "Plausible", "Plausible", "No", "Plausible", "Plausible", "Strict", "Strict"]
    # p_o = 5/8; marginals human (3,2,3)/8, judge (3,4,1)/8 -> p_e = (9+8+3)/64 = 20/64
    # kappa = (5/8 - 20/64) / (1 - 20/64) = 20/44 = 5/11
    raw, kappa = cohen_kappa(human, judge)
    assert raw == pytest.approx(5 / 8) and kappa == pytest.approx(5 / 11)
    assert cohen_kappa(["No"] * 3, ["No"] * 3)[0] == 1.0 and math.isnan(cohen_kappa(["No"] * 3, ["No"] * 3)[1])
    assert cohen_kappa(["Strict", "No"], ["No", "Strict"])[1] == pytest.approx(-1.0)


def test_agreement_joins_on_rules(tmp_path):
    human = tmp_path / "human.csv"
    rows = [(1, -1, 2, "Strict"), (1, 3, 2, "Strict"), (2, -1, 3, "Plausible"), (4, -1, 5, "Noise"),
            (5, -1, 6, "No"), (6, -1, 7, "Plausible"), (7, -1, 8, "Strict"), (8, -1, 9, "No"), (9, -1, 1, "No")]
    pd.DataFrame(rows, columns=["p1", "p2", "q", "label"]).to_csv(human, index=False)
    judged_cats = ["Strict", "Plausible", "Plausible", "No", "Plausible", "Plausible", "Strict", "Strict"]
    judged = pd.DataFrame({"p1": [r[0] for r in rows[:8]], "p2": [r[1] for r in rows[:8]],
                           "q": [r[2] for r in rows[:8]], "category": judged_cats,
                           "judge_status": ["ok"] * 8})
    result = agreement(human, judged)
    assert result.n == 8 and result.n_unmatched == 1
    assert result.raw_agreement == pytest.approx(5 / 8) and result.kappa == pytest.approx(5 / 11)
    assert result.confusion.loc["No", "Plausible"] == 1 and int(result.confusion.values.sum()) == 8


def test_human_labelled_rules_are_judged_and_compared(tmp_path):
    """evaluate.human_labels: the judge labels the human-labelled rules too (a missing p2 is
    a one-premise rule), and the summary counts what both labelled."""
    human = tmp_path / "human.csv"
    human.write_text("p1,q,category\n1,2,Strict\n2,3,No\n3,1,Plausible\n")
    answers = tmp_path / "answers.csv"
    answers.write_text("p1,p2,q,category,rationale\n1,-1,2,Strict,def\n2,-1,3,Plausible,heur\n")
    explanations = pd.DataFrame({"feature": [1, 2, 3], "explanation": ["one", "two", "three"]})
    judge = make_judge(JudgeConfig(backend="replay", replay_path=str(answers)))
    result = agreement_with_human_labels(str(human), explanations, judge)
    assert (result["n"], result["n_unmatched"]) == (2, 1)  # the judge has no answer for 3 -> 1
    assert result["raw_agreement"] == pytest.approx(0.5)
    assert result["confusion"]["Strict"]["Strict"] == 1 and result["confusion"]["Plausible"]["No"] == 1
