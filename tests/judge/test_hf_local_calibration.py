"""Contextual calibration of the hf_local judge (Zhao et al., 2021): a constant answer
prior is removed, the content-free prior is measured once per prompt template, and
calibrated and raw labels never share a cache record."""

from __future__ import annotations

import pytest

from sal.config.judge import JudgeConfig
from sal.judge import CATEGORIES, DECISIONS, OK, Span, make_judge, rule_item, verify_item
from sal.judge.hf_local import HFLocalJudge
from sal.judge.prompts import rule_prompt, verify_prompt

BONUS = 1000.0  # a label prior far larger than any content effect of the tiny model


def spans(n: int) -> list[Span]:
    return [Span(f"x{i} = {i}", (f"x{i}", " =", f" {i}"), 1.0) for i in range(n)]


def rules() -> list:
    return [rule_item(i, -1, 50 + i, [f"premise {i}"], f"conclusion {i * i}") for i in range(4)] + \
        [rule_item(i, 10 + i, 60 + i, [f"first {i}", f"second {i}"], f"then {i}") for i in range(3)]


def answer_name(choice: str) -> str:
    """'Strict"' -> 'Strict', 'Maybe]]' -> 'Maybe' (the forced closing scaffolding dropped)."""
    return choice.rstrip('"]')


def judge_for(tiny_lm, char_tokenizer, calibrate: bool, **kw):
    return make_judge(JudgeConfig(backend="hf_local", cache_dir=None, hf_calibrate=calibrate, **kw),
                      model=tiny_lm, tokenizer=char_tokenizer)


def add_prior(monkeypatch, favoured: str, calls: list[str] | None = None) -> None:
    """Wrap the real scorer: `favoured` gets +BONUS in every prompt (a pure label prior)."""
    real = HFLocalJudge._choice_logliks

    def biased(self, prompts, prefix, choices):
        if calls is not None:
            calls.extend(prompts)
        return [[s + (BONUS if answer_name(c) == favoured else 0.0) for s, c in zip(scores, choices)]
                for scores in real(self, prompts, prefix, choices)]

    monkeypatch.setattr(HFLocalJudge, "_choice_logliks", biased)


def test_calibration_removes_a_constant_label_prior(monkeypatch, tiny_lm, char_tokenizer):
    items = rules()
    # Content-dependent reference: the calibrated labels of the unbiased model (checked
    # against a brute-force recomputation in test_backends.py).
    reference = [r.label for r in judge_for(tiny_lm, char_tokenizer, True).judge(items, progress=False)]
    unused = [c for c in CATEGORIES if c not in reference]
    assert unused, f"the reference labels use every category {reference}; pick other items"
    assert len(set(reference)) > 1, "the reference must depend on the content for this test to show anything"
    favoured = unused[0]  # a prior towards an answer the content never asks for

    add_prior(monkeypatch, favoured)
    raw = judge_for(tiny_lm, char_tokenizer, False).judge(items, progress=False)
    assert [r.label for r in raw] == [favoured] * len(items)  # the prior decides everything
    calibrated = judge_for(tiny_lm, char_tokenizer, True).judge(items, progress=False)
    assert [r.label for r in calibrated] == reference  # ...and calibration removes it exactly
    assert all(r.status == OK and r.text.startswith("log-likelihood label (calibrated)") for r in calibrated)


def test_calibrated_label_is_argmax_of_margin(monkeypatch, tiny_lm, char_tokenizer):
    """A hand-made scorer: content adds +10 to the answer it names (a "<<name>>" marker in
    the prompt), the prior adds +100 to "No". Raw argmax: always "No"; calibrated: the
    named answer. The rationale reports the margins, i.e. content minus content-free."""

    def scorer(self, prompts, prefix, choices):
        return [[100.0 * (answer_name(c) == "No") + 10.0 * (f"<<{answer_name(c)}>>" in prompt) - i
                 for i, c in enumerate(choices)] for prompt in prompts]

    monkeypatch.setattr(HFLocalJudge, "_choice_logliks", scorer)
    named_rules = [("Strict", rule_item(1, -1, 2, ["<<Strict>> sqrt"], "root")),
                   ("Plausible", rule_item(3, 4, 5, ["x", "<<Plausible>>"], "y")),
                   ("No", rule_item(6, -1, 7, ["<<No>>"], "z"))]
    named_verifies = [(d, verify_item(i, f"<<{d}>> pattern", spans(3))) for i, d in enumerate(DECISIONS)]
    cases = named_rules + named_verifies
    items = [item for _, item in cases]

    raw = judge_for(tiny_lm, char_tokenizer, False).judge(items, progress=False)
    assert [r.label for r in raw] == ["No"] * len(items)
    calibrated = judge_for(tiny_lm, char_tokenizer, True).judge(items, progress=False)
    assert [r.label for r in calibrated] == [want for want, _ in cases]
    # Margins = scorer(prompt) - scorer(content-free prompt): +10 on the named answer, 0 elsewhere.
    assert calibrated[0].text == ("log-likelihood label (calibrated); margins over the content-free prompt: "
                                  "Strict=+10.00, Plausible=+0.00, No=+0.00")
    assert raw[0].text == ("log-likelihood label (uncalibrated); log-likelihoods: "
                           "Strict=+10.00, Plausible=-1.00, No=+98.00")


def test_content_free_prior_is_measured_once_per_template(monkeypatch, tiny_lm, char_tokenizer):
    calls: list[str] = []
    add_prior(monkeypatch, "Strict", calls)
    items = rules() + [verify_item(i, f"feature {i}", spans(2)) for i in range(3)]
    judge = judge_for(tiny_lm, char_tokenizer, True)
    judge.judge(items[:5], progress=False)
    judge.judge(items[5:], progress=False)  # a later batch reuses the priors in memory
    free = [p for p in calls if p not in {item.prompt for item in items}]
    assert sorted(free) == sorted([rule_prompt(["N/A"], "N/A"), rule_prompt(["N/A", "N/A"], "N/A"),
                                   verify_prompt("N/A", ["N/A", "N/A"])])
    assert len(calls) == len(items) + 3

    calls.clear()
    judge_for(tiny_lm, char_tokenizer, False).judge(items, progress=False)
    assert sorted(calls) == sorted(item.prompt for item in items)  # raw labels need no prior


def test_calibration_is_part_of_the_cache_key(tmp_path, tiny_lm, char_tokenizer):
    items = rules()[:2] + [verify_item(1, "feature", spans(2))]
    cfg = dict(backend="hf_local", cache_dir=str(tmp_path / "cache"))
    on = make_judge(JudgeConfig(**cfg, hf_calibrate=True), model=tiny_lm, tokenizer=char_tokenizer)
    off = make_judge(JudgeConfig(**cfg, hf_calibrate=False), model=tiny_lm, tokenizer=char_tokenizer)
    assert all(on._key(item, 0) != off._key(item, 0) for item in items)

    on.judge(items, progress=False)
    off.judge(items, progress=False)  # must not be served the calibrated answers
    assert off.tally.n_cache_hits == 0 and off.tally.n_requests == len(items)
    again = make_judge(JudgeConfig(**cfg, hf_calibrate=True), model=tiny_lm, tokenizer=char_tokenizer)
    again.judge(items, progress=False)
    assert again.tally.n_cache_hits == len(items) and again.tally.n_requests == 0


@pytest.mark.parametrize("bare", [True, False])
def test_content_free_prompt_needs_no_structured_fields(bare):
    """A bare JudgeItem (prompt only) still gets the right template's content-free prompt."""
    from sal.judge.hf_local import content_free_prompt
    from sal.judge.types import RULE, VERIFY, JudgeItem

    two = rule_item(1, 2, 3, ["a", "b"], "c")
    ver = verify_item(1, "f", spans(4))
    if bare:
        two = JudgeItem(two.key, RULE, two.prompt)
        ver = JudgeItem(ver.key, VERIFY, ver.prompt)
    assert content_free_prompt(two) == rule_prompt(["N/A", "N/A"], "N/A")
    assert content_free_prompt(ver) == verify_prompt("N/A", ["N/A"] * 4)
