"""The prompts are the paper's Figures 7-10 word for word, with their slots filled."""

import re
from pathlib import Path

import pytest

from sal.judge import Span, explain_item, rule_item, verify_item
from sal.judge.prompts import explain_prompt, rule_prompt, verify_prompt

FIGURES = Path(__file__).resolve().parents[1] / "data" / "paper"
"""Figures 7-10 as the paper's text has them (copied from the spec, typesetting included)."""


def words(text: str) -> list[str]:
    """Alphabetic words only: typesetting (markdown, LaTeX, subscripts, line breaks) ignored."""
    text = re.sub(r"\\[a-zA-Z]+", " ", text)  # LaTeX commands such as \rightarrow
    text = "\n".join(line for line in text.splitlines() if not line.strip().isdigit())  # page line numbers
    return re.findall(r"[A-Za-z]+", text)


def paper_figure(number: int) -> str:
    return (FIGURES / f"figure{number}.txt").read_text()


def test_figure7_word_for_word():
    paper = paper_figure(7)
    ours = explain_prompt(["[[Insert Span 1 Here]]", "[[Insert Span 2 Here]]"])
    assert words(ours) == words(paper.replace("...", ""))


def test_figure8_word_for_word():
    paper = paper_figure(8)
    ours = verify_prompt("[[Insert the Feature Summary Here]]", ["[[Insert Span 1 Here]]", "[[Insert Span 2 Here]]"])
    assert words(ours) == words(paper.replace("...", ""))


def test_figure9_word_for_word():
    paper = paper_figure(9)
    ours = rule_prompt(["[[Insert Premise Here]]"], "[[Insert Conclusion Here]]")
    assert words(ours) == words(paper)


def test_figure10_word_for_word():
    paper = paper_figure(10)
    ours = rule_prompt(["[[ Insert Premise 1 Here ]]", "[[ Insert Premise 2 Here ]]"], "[[ Insert Premise 3 Here ]]")
    assert words(ours) == words(paper)


def test_slots_are_filled_in_order():
    spans = [Span(f"text {i}\nline", (), 1.0) for i in range(15)]
    item = explain_item(7, spans)
    assert "[[Insert" not in item.prompt
    positions = [item.prompt.index(f"Span {i + 1}: text {i}⏎line") for i in range(15)]
    assert positions == sorted(positions)
    assert item.key == "explain/7" and item.prompt.endswith("Span 15: text 14⏎line")

    v = verify_item(7, 'Exact pattern: "x"', spans[:3])
    assert v.prompt.count('Feature: Exact pattern: "x"') == 1 and v.prompt.endswith("Span 3: text 2⏎line")

    one = rule_item(3, -1, 9, ["PREMISE-TEXT"], "CONCLUSION-TEXT")
    assert one.key == "rule/3,-1,9"
    assert one.prompt.index("**Premise (P)**\nPREMISE-TEXT") < one.prompt.index("**Conclusion (C)**\nCONCLUSION-TEXT")
    two = rule_item(3, 4, 9, ["FIRST", "SECOND"], "THIRD")
    assert two.prompt.index("(P1)**\nFIRST") < two.prompt.index("(P2)**\nSECOND") < two.prompt.index("(C)**\nTHIRD")
    assert "P1 ∧ P2 → C" in two.prompt and "P → C" in one.prompt


def test_braces_in_explanations_do_not_break_formatting():
    prompt = rule_prompt(['Exact pattern: "\\frac{a}{b}"'], "Semantic: {set} notation")
    assert '"\\frac{a}{b}"' in prompt and "{set} notation" in prompt


def test_rule_item_checks_premise_count():
    with pytest.raises(ValueError, match="premise"):
        rule_item(1, 2, 3, ["only one"], "c")
    with pytest.raises(ValueError, match="one or two premises"):
        rule_prompt(["a", "b", "c"], "d")
