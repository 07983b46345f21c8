"""Parsers on realistic judge answers (R1-style reasoning, sloppy formats)."""

import pytest

from sal.judge import RuleVerdict, Summary, parse_decision, parse_rule_verdict, parse_summary

R1_RULE = """<think>
Okay, the premise is about square roots and the conclusion is the number 2. Is this Strict?
A theorem would say sqrt(4) = 2, so "Category": "Strict" could fit... but the premise is any
square root, not sqrt(4). Maybe it is No, just noise. Let me draft:
<judgement> {"Category": "No", "Relation/Intuition": "draft"} </judgement>
Hmm, actually simplifying radicals often ends in small integers, which is a heuristic.
</think>

<judgement> {"Category": "Plausible", "Relation/Intuition": "Simplifying square roots often yields small integers like 2."} </judgement>"""


@pytest.mark.parametrize(
    "text, expected",
    [
        (R1_RULE, RuleVerdict("Plausible", "Simplifying square roots often yields small integers like 2.")),
        # R1 through some servers: the opening <think> was pre-filled, only </think> appears.
        ("The answer could be Plausible or No.\n</think>\n<judgement>{\"Category\": \"Strict\", "
         "\"Relation/Intuition\": \"Pythagorean theorem\"}</judgement>", RuleVerdict("Strict", "Pythagorean theorem")),
        # No braces at all, exactly like the template in Figure 9.
        ('<judgement> "Category": "Strict", "Relation/Intuition": "a^2+b^2=c^2 for right triangles" </judgement>',
         RuleVerdict("Strict", "a^2+b^2=c^2 for right triangles")),
        # Code fence, single quotes, lower case, "Noise" as the third category.
        ("Here is my answer:\n```json\n<judgement> {'category': 'noise', 'relation/intuition': 'unrelated tokens'} "
         "</judgement>\n```\nHope this helps.", RuleVerdict("No", "unrelated tokens")),
        # Missing closing brace and missing closing tag.
        ('<judgement> {"Category": "plausible", "Relation/Intuition": "check the answer by substitution"',
         RuleVerdict("Plausible", "check the answer by substitution")),
        # Apostrophe inside a double-quoted rationale.
        ('<judgement> {"Category": "STRICT", "Relation/Intuition": "Vieta\'s formulas relate roots"} </judgement>',
         RuleVerdict("Strict", "Vieta's formulas relate roots")),
        # No tag: the last Category in the answer counts.
        ('After thinking: "Category": "No", "Relation/Intuition": "no link"', RuleVerdict("No", "no link")),
        # Escaped quote inside the rationale.
        (r'<judgement> {"Category": "Strict", "Relation/Intuition": "the \"if\" part implies it"} </judgement>',
         RuleVerdict("Strict", 'the "if" part implies it')),
        # Rationale missing: category still read, rationale empty.
        ('<judgement> {"Category": "Plausible"} </judgement>', RuleVerdict("Plausible", "")),
        ("<JUDGMENT> Category: Strict, Relation/Intuition: definition of a prime </JUDGMENT>",
         RuleVerdict("Strict", "definition of a prime")),
    ],
)
def test_parse_rule_verdict_realistic(text, expected):
    assert parse_rule_verdict(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        "",
        None,
        "<think>It is Strict. Definitely Strict. <judgement> {\"Category\": \"Strict\"} </judgement></think>",
        # The template echoed back is not an answer.
        '<judgement> "Category": "Strict/Plausible/No", "Relation/Intuition": "write the captured relation" </judgement>',
        '<judgement> {"Category": "Maybe", "Relation/Intuition": "x"} </judgement>',
        "I think this is a strict rule.",
    ],
)
def test_parse_rule_verdict_refuses(text):
    assert parse_rule_verdict(text) is None


@pytest.mark.parametrize(
    "text, expected",
    [
        ("<think>Span 3 does not match, so maybe No... but 27 of 30 do, so Yes? Probably.</think>\n"
         "Final Decision: [[Yes]]", "Yes"),
        ("Final Decision: [[maybe]]", "Maybe"),
        ("**Final Decision:** [[Probably]]", "Probably"),
        ("Final decision: No", "No"),
        ("First I thought Final Decision: [[No]] but on reflection\nFinal Decision: [[Maybe]]", "Maybe"),
        ("Most spans match.\n[[Probably]]", "Probably"),
        ("```\nFinal Decision: [[YES]]\n```", "Yes"),
        ("reasoning mentions Yes and No</think>Final Decision: [ [Probably] ]".replace("[ [", "[[").replace("] ]", "]]"),
         "Probably"),
    ],
)
def test_parse_decision(text, expected):
    assert parse_decision(text) == expected


@pytest.mark.parametrize(
    "text",
    ["", "Final Decision: [[Yes/Probably/Maybe/No]]", "<think>Final Decision: [[Yes]]</think>", "Looks fine to me."],
)
def test_parse_decision_refuses(text):
    assert parse_decision(text) is None


@pytest.mark.parametrize(
    "text, expected",
    [
        ('<think>Maybe "Cannot Tell"? No: every span ends with "\\frac".</think>\n'
         '<summary> Exact pattern: "\\frac" opening a fraction in LaTeX </summary>',
         Summary("exact", 'Exact pattern: "\\frac" opening a fraction in LaTeX')),
        ("<summary>Semantic: divisibility, with a few \"divisible\"/\"factor\"/\"multiple of\"</summary>",
         Summary("semantic", 'Semantic: divisibility, with a few "divisible"/"factor"/"multiple of"')),
        ("<summary> Cannot Tell </summary>", Summary("cannot_tell", "Cannot Tell")),
        ("<SUMMARY> cannot tell.</SUMMARY>", Summary("cannot_tell", "cannot tell.")),
        ("<summary> the word therefore at the start of a conclusion </summary>",
         Summary("semantic", "the word therefore at the start of a conclusion")),
        ("<summary> Cannot Tell </summary> wait, no:\n<summary> Exact pattern: \"=\" </summary>",
         Summary("exact", 'Exact pattern: "="')),
        ("No tags, but:\nExact pattern: \"x^2\" in polynomials\n", Summary("exact", 'Exact pattern: "x^2" in polynomials')),
    ],
)
def test_parse_summary(text, expected):
    assert parse_summary(text) == expected


@pytest.mark.parametrize(
    "text",
    ["", "<summary>   </summary>", "<summary> Exact pattern: </summary>", "<think><summary> Cannot Tell </summary></think>",
     "The neuron likes numbers."],
)
def test_parse_summary_refuses(text):
    assert parse_summary(text) is None


@pytest.mark.parametrize("text", [
    '<think>So it is Strict.\n<judgement>{"Category": "Strict"}</judgement> wait, let me check',
    '</think>first pass</think> <think>second thoughts <judgement>{"Category": "No"}</judgement>',
])
def test_a_reply_that_ends_inside_its_reasoning_has_no_answer(text):
    from sal.judge.parse import parse_rule_verdict

    assert parse_rule_verdict(text) is None
    closed = text + "</think>"  # the same drafts, once the reasoning is over, are not the answer either
    assert parse_rule_verdict(closed + ' <judgement>{"Category": "Plausible"}</judgement>').category == "Plausible"
