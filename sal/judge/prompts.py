"""The paper's judge prompts (Figures 7, 8, 9 and 10), word for word, with their slots filled.

Each prompt is sent as a single *user* message (the paper puts the instruction in the user
role, as DeepSeek-R1's documentation recommends). Faithful to the words; only the PDF
extraction's typesetting is normalised: bold markers are written as markdown `**...**`,
LaTeX math as plain text (P → C, P1 ∧ P2 → C), stray spaces before commas dropped and one
hard line wrap inside Figure 10's last sentence joined. The `[[Insert ... Here]]` slots are
replaced by the filled text; the `...` after "Span 2" in Figures 7/8 stands for the
remaining spans. Newlines inside a span are shown as "⏎" so that every span stays on its
own "Span i:" line and a span that ends with a newline still has a visible ending.
"""

from __future__ import annotations

from typing import Sequence

NEWLINE_MARK = "\u23ce"  # ⏎

# Figure 7 (explain a feature from its top-15 spans).
EXPLAIN_HEADER = (
    "We are studying the behaviors of neurons from a language model. Looking at some text spans "
    "activated by the neuron and summarize what feature the neuron is looking for. Please pay most "
    "attention to the ending of each span. Your summary should be in one (short) sentence, and only "
    "describe the most significant feature.\n"
    "\n"
    "Organize your final summary within the special tag: `<summary> summary here </summary>`. If there "
    "is one short lexical pattern duplicated across all text spans, you extract it out: "
    '`<summary> Exact pattern: "Key Pattern" with context info here </summary>`. An extracted pattern '
    'typically is a single word/phrase ("xxx", where "xxx" can be a specific word or pattern), an n-gram '
    '(e.g., "xxx yyy" or "xxx yyy zzz"), or a skip-gram ("xxx ... yyy"). If there is no lexical patterns '
    "shown off, try to summarize the semantic of the text spans: `<summary> Semantic: semantic behind the "
    'spans, with a few "Exemplar Patterns" here </summary>` The semantic usually is a specific concept, '
    'topic, or theme, expressing by multiple semantic similar phrases (e.g., "... xxx/yyy/zzz ...", where '
    "xxx/yyy/zzz semantically share the same concept). If you cannot summarize the text spans with a clear "
    "pattern or concise semantics, you should say: `<summary> Cannot Tell </summary>`.\n"
    "\n"
    "Keep your `<think>` as short as possible, don't repeat your think again and again.\n"
    "\n"
    "The following are text spans that can maximally activate a certain neuron:\n"
)

# Figure 8 (verify a summary against the top-30 spans).
VERIFY_HEADER = (
    "You are a linguistic expert.\n"
    "\n"
    "Determine whether the given feature is fuzzy matched by the txt spans. *Fuzzy Matched* means the "
    "*semantic/concept* of the given feature is explicitly or *implicitly* shown.\n"
    "\n"
    'Organize your final decision in the format of "Final Decision: [[Yes/Probably/Maybe/No]]". '
    '"Yes/Probably/Maybe" indicates at least 85%/65%/40% text spans include the given feature.\n'
    "\n"
    "Keep your <think> as short as possible, don't repeat your thought again and again.\n"
    "\n"
)

# Figure 9 (soundness of a one-premise rule P -> C).
RULE1_TEMPLATE = (
    "**Task**\n"
    "\n"
    "For the given premise P and conclusion C, judge whether the implication\n"
    "\n"
    "P → C\n"
    "\n"
    "is a **Strict or Plausible Horn Clause**, i.e., whether the occurrence of premise P in the front "
    "can point toward the occurrence of conclusion C later in solving mathematical problems. You should "
    'classify the given horn clause candidate into one of "Strict/Plausible/No". Here, "Strict Horn '
    'Clauses" capture causally and logically relations (e.g., mathematical theorems), while "Plausible '
    'Horn Clauses" capture helpful intuitions or heuristic strategies to solve math problems (e.g., '
    "planning and checking) *without* strict logical soundness required. If the horn clause candidate "
    'does *not* reflect any strict relations or plausible intuitions, classify it as "No", indicating '
    "not a horn clause.\n"
    "\n"
    "**Premise (P)**\n"
    "{premise}\n"
    "\n"
    "**Conclusion (C)**\n"
    "{conclusion}\n"
    "\n"
    "**Output**\n"
    "\n"
    "Organize your final judgement as a **JSON** object with the following keywords:\n"
    '"Category": select from "Strict/Plausible/No", "Relation/Intuition": a string less than 25 words\n'
    'The JSON object should be wrapped by a special tag: <judgement> "Category": "Strict/Plausible/No", '
    '"Relation/Intuition": "write the captured relation/intuition here" </judgement>.'
)

# Figure 10 (soundness of a two-premise rule P1 ∧ P2 -> C). Its third slot reads
# "[[Insert Premise 3 Here]]" in the paper but sits under "Conclusion (C)".
RULE2_TEMPLATE = (
    "**Task**\n"
    "For the given paired premises P1, P2 and conclusion C, judge whether the implication\n"
    "P1 ∧ P2 → C\n"
    "is a Strict or Plausible Horn Clause, i.e., whether the co-occurrence of premises P1 and P2 in "
    "the front can point toward the occurrence of conclusion C later in solving mathematical problems. "
    'You should classify the given horn clause candidate into one of "Strict/Plausible/No". Here, '
    '"Strict Horn Clauses" capture causally and logically relations (e.g., mathematical theorems), while '
    '"Plausible Horn Clauses" capture helpful intuitions or heuristic strategies to solve math problems '
    "(e.g., planning and checking) without strict logical soundness required. If the horn clause "
    "candidate does not reflect any strict relations or plausible intuitions, classify it as \"No\", "
    "indicating not a horn clause.\n"
    "\n"
    "**First Premise (P1)**\n"
    "{premise1}\n"
    "\n"
    "**Second Premise (P2)**\n"
    "{premise2}\n"
    "\n"
    "**Conclusion (C)**\n"
    "{conclusion}\n"
    "\n"
    "**Output**\n"
    "Organize your final judgement as a JSON object with the following keywords:\n"
    '"Category": select from "Strict/Plausible/No", "Relation/Intuition": a string less than 25 words\n'
    'The JSON object should be wrapped by a special tag: <judgement> "Category": "Strict/Plausible/No", '
    '"Relation/Intuition": "write the captured relation/intuition here" </judgement>.'
)


def render_span(text: str) -> str:
    """One span on one line: newlines shown as ⏎ (see module docstring)."""
    return text.replace("\r\n", "\n").replace("\n", NEWLINE_MARK)


def explain_prompt(spans: Sequence[str]) -> str:
    """Figure 7 filled with the given span texts (the paper uses the top 15)."""
    if not spans:
        raise ValueError("explain_prompt needs at least one span")
    body = "\n".join(f"Span {i}: {render_span(s)}\n" for i, s in enumerate(spans, start=1))
    return EXPLAIN_HEADER + "\n" + body.rstrip("\n")


def verify_prompt(summary: str, spans: Sequence[str]) -> str:
    """Figure 8 filled with the summary under test and the span texts (paper: top 30)."""
    if not spans:
        raise ValueError("verify_prompt needs at least one span")
    if not summary or not summary.strip():
        raise ValueError("verify_prompt needs a non-empty feature summary")
    lines = [f"Feature: {summary.strip()}"]
    lines += [f"Span {i}: {render_span(s)}" for i, s in enumerate(spans, start=1)]
    return VERIFY_HEADER + "\n".join(lines)


def rule_prompt(premises: Sequence[str], conclusion: str) -> str:
    """Figure 9 (one premise) or Figure 10 (two premises), filled with feature explanations."""
    if len(premises) == 1:
        return RULE1_TEMPLATE.format(premise=premises[0].strip(), conclusion=conclusion.strip())
    if len(premises) == 2:
        return RULE2_TEMPLATE.format(
            premise1=premises[0].strip(), premise2=premises[1].strip(), conclusion=conclusion.strip()
        )
    raise ValueError(f"rules have one or two premises (paper Appendix D), got {len(premises)}")
