"""'Think'-style prompts (DeepSeek-R1-Zero / Open-Reasoner-Zero) for the corpus responses."""

from __future__ import annotations

PROMPTS = {
    # The R1-Zero template (DeepSeek-AI, 2025, Table 1), as adopted by Open-Reasoner-Zero.
    "r1_zero": (
        "A conversation between User and Assistant. The user asks a question, and the Assistant "
        "solves it. The assistant first thinks about the reasoning process in the mind and then "
        "provides the user with the answer. The reasoning process and answer are enclosed within "
        "<think> </think> and <answer> </answer> tags, respectively, i.e., <think> reasoning "
        "process here </think> <answer> answer here </answer>. User: {question} Assistant: <think>"
    ),
}


STOP_STRINGS = {
    # The template asks for "<answer> answer here </answer>": the response ends there. A base
    # model may instead start the next turn; Open-Reasoner-Zero's config.py stops its R1-Zero
    # prompts at these same four strings.
    "r1_zero": ("</answer>", "User:", "Human:", "Assistant:"),
}
KEPT_STOPS = ("</answer>",)
"""Stop strings that belong to the response (the closing tag); the others start a new turn
and are cut off with everything after them."""


def stop_strings(template: str = "r1_zero") -> tuple:
    """Where a response to this template ends."""
    return STOP_STRINGS.get(template, ())


def build_prompt(question: str, template: str = "r1_zero") -> str:
    if template not in PROMPTS:
        raise KeyError(f"Unknown prompt template {template!r}; known: {sorted(PROMPTS)}.")
    return PROMPTS[template].format(question=question)
