"""lexical, replay and hf_local backends."""

from __future__ import annotations

import json
from typing import Optional

import pytest
import torch

from sal.config.judge import JudgeConfig
from sal.judge import (
    CATEGORIES,
    DECISIONS,
    DECLINED,
    FAILED,
    OK,
    UNPARSEABLE,
    Span,
    explain_item,
    export_judgments,
    make_judge,
    rule_item,
    verify_item,
)
from sal.judge.lexical import decision_for_share
from sal.judge.prompts import rule_prompt, verify_prompt


def span(*tokens: str, act: float = 1.0) -> Span:
    return Span("".join(tokens), tuple(tokens), act)


# -- lexical ---------------------------------------------------------------------------
def test_lexical_explains_by_shared_suffix():
    judge = make_judge(JudgeConfig(backend="lexical"))
    # 10 of 15 spans end with " \frac", 9 with "= \frac" (60%), no trigram is shared:
    # the longest suffix over the 50% bar, the bigram, wins.
    spans = [span(f"x{i}", " =", " \\frac") for i in range(9)] + [span("y", " +", " \\frac")]
    spans += [span("a", " b", f" c{i}") for i in range(5)]
    res = judge.judge([explain_item(1, spans)], progress=False)[0]
    assert (res.status, res.label, res.text) == (OK, "exact", 'Exact pattern: "= \\frac"')
    # Case and surrounding whitespace do not split a pattern; no majority -> Cannot Tell.
    mixed = [span("the", " Sum")] * 4 + [span("of", " sum ")] * 4 + [span("z", f" w{i}") for i in range(8)]
    assert judge.judge([explain_item(2, mixed)], progress=False)[0].text == 'Exact pattern: "Sum"'
    scattered = [span("a", f" w{i}") for i in range(15)]
    res = judge.judge([explain_item(3, scattered)], progress=False)[0]
    assert (res.status, res.label, res.text) == (OK, "cannot_tell", "Cannot Tell")


@pytest.mark.parametrize("share, decision", [(1.0, "Yes"), (0.85, "Yes"), (0.84, "Probably"), (0.65, "Probably"),
                                             (0.64, "Maybe"), (0.40, "Maybe"), (0.39, "No"), (0.0, "No")])
def test_lexical_thresholds(share, decision):
    assert decision_for_share(share) == decision


@pytest.mark.parametrize("hits, decision", [(30, "Yes"), (26, "Yes"), (25, "Probably"), (20, "Probably"),
                                            (19, "Maybe"), (12, "Maybe"), (11, "No")])
def test_lexical_verifies_on_30_spans(hits, decision):
    spans = [span("let ", "x = \\Frac{1}{2}")] * hits + [span("nothing ", "here")] * (30 - hits)
    res = make_judge(JudgeConfig(backend="lexical")).judge(
        [verify_item(5, 'Exact pattern: "\\frac" in fractions', spans)], progress=False)[0]
    assert (res.status, res.label) == (OK, decision)


def test_lexical_declines_rules_explicitly():
    judge = make_judge(JudgeConfig(backend="lexical"))
    res = judge.judge([rule_item(1, -1, 2, ["a"], "b")], progress=False)[0]
    assert res.status == DECLINED and res.label is None and "cannot judge rule" in res.error
    assert judge.tally.n_declined == 1 and judge.tally.problems[0][1] == DECLINED


# -- replay ----------------------------------------------------------------------------
def test_replay_from_csv_and_jsonl(tmp_path):
    csv = tmp_path / "human.csv"
    csv.write_text("p1,p2,q,category,rationale\n1,-1,2,strict,definition\n1,3,2,Noise,\n4,,5,Maybe,\n")
    judge = make_judge(JudgeConfig(backend="replay", replay_path=str(csv)))
    res = judge.judge([rule_item(1, -1, 2, ["a"], "b"), rule_item(1, 3, 2, ["a", "c"], "b"),
                       rule_item(4, -1, 5, ["d"], "e"), rule_item(9, -1, 9, ["x"], "y")], progress=False)
    assert [(r.status, r.label, r.text) for r in res] == [
        (OK, "Strict", "definition"), (OK, "No", ""), (UNPARSEABLE, None, None), (FAILED, None, None)]
    assert "no answer" in res[3].error

    jsonl = tmp_path / "run.jsonl"
    rows = [{"key": "explain/7", "response": '<think>hm</think><summary> Exact pattern: "=" </summary>'},
            {"feature": 8, "explanation": "Semantic: primes", "decision": "probably"}]
    jsonl.write_text("\n".join(json.dumps(r) for r in rows))
    judge = make_judge(JudgeConfig(backend="replay", replay_path=str(jsonl)))
    s = [span("a")]
    res = judge.judge([explain_item(7, s), explain_item(8, s), verify_item(8, "Semantic: primes", s),
                       verify_item(7, 'Exact pattern: "="', s)], progress=False)
    assert [(r.status, r.label) for r in res] == [(OK, "exact"), (OK, "semantic"), (OK, "Probably"), (FAILED, None)]


def test_export_then_replay_roundtrip(tmp_path):
    lexical = make_judge(JudgeConfig(backend="lexical"))
    spans = [span("a", " =")] * 20 + [span("b", " c")] * 10
    items = [explain_item(1, spans[:15]), verify_item(1, 'Exact pattern: "="', spans), rule_item(1, -1, 2, ["a"], "b")]
    first = lexical.judge(items, progress=False)
    path = export_judgments(first, tmp_path / "judgments.jsonl")
    replayed = make_judge(JudgeConfig(backend="replay", replay_path=str(path))).judge(items, progress=False)
    assert [(r.label, r.text) for r in replayed[:2]] == [(r.label, r.text) for r in first[:2]]
    assert replayed[2].status == FAILED  # declined before: replaying must not invent a label


def test_replay_rejects_conflicting_rows(tmp_path):
    csv = tmp_path / "h.csv"
    csv.write_text("p1,p2,q,category\n1,-1,2,Strict\n1,-1,2,No\n")
    with pytest.raises(ValueError, match="twice"):
        make_judge(JudgeConfig(backend="replay", replay_path=str(csv)))


# -- hf_local --------------------------------------------------------------------------
def brute_force_scores(model, tokenizer, prompt: str, prefix: str, choices: list[str]) -> list[float]:
    """Summed log-likelihood of each choice, recomputed with full forwards (no KV cache)."""
    text = tokenizer.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False, add_generation_prompt=True)
    ctx = tokenizer(text, add_special_tokens=False)["input_ids"] + tokenizer(prefix, add_special_tokens=False)["input_ids"]
    scores = []
    for choice in choices:
        ids = tokenizer(choice, add_special_tokens=False)["input_ids"]
        with torch.no_grad():
            logp = model(torch.tensor([ctx + ids])).logits[0].log_softmax(-1)
        scores.append(sum(float(logp[len(ctx) - 1 + j, t]) for j, t in enumerate(ids)))
    return scores


def brute_force_choice(model, tokenizer, prompt: str, prefix: str, choices: list[str],
                       content_free: Optional[str] = None) -> int:
    """Argmax of the summed log-likelihood; minus that under `content_free` when given."""
    scores = brute_force_scores(model, tokenizer, prompt, prefix, choices)
    if content_free is not None:
        prior = brute_force_scores(model, tokenizer, content_free, prefix, choices)
        scores = [s - p for s, p in zip(scores, prior)]
    return max(range(len(choices)), key=scores.__getitem__)


@pytest.mark.parametrize("calibrate", [True, False])
def test_hf_local_labels_by_loglik_and_caches(tmp_path, tiny_lm, char_tokenizer, calibrate):
    # hf_dtype as the tiny model's: the judge that loads nothing keys its cache by the dtype its
    # loader would use, and `auto` is bfloat16 on a CPU with native bf16.
    cfg = JudgeConfig(backend="hf_local", cache_dir=str(tmp_path / "cache"), hf_max_new_tokens=6,
                      hf_calibrate=calibrate, hf_dtype="float32")
    judge = make_judge(cfg, model=tiny_lm, tokenizer=char_tokenizer)
    spans = [span("x = ", "3"), span("y = ", "4")]
    items = [rule_item(i, -1, i + 1, [f"premise number {i}"], f"conclusion {i}") for i in range(3)]
    items += [verify_item(1, 'Exact pattern: "="', spans), explain_item(1, spans)]
    results = judge.judge(items, progress=False)
    # The content-free prompts, written out independently of the judge: slots "N/A".
    free_rule = rule_prompt(["N/A"], "N/A") if calibrate else None
    free_verify = verify_prompt("N/A", ["N/A", "N/A"]) if calibrate else None
    for item, res in zip(items[:3], results[:3]):
        assert res.status == OK
        want = brute_force_choice(tiny_lm, char_tokenizer, item.prompt, '<judgement> {"Category": "',
                                  [c + '"' for c in CATEGORIES], free_rule)
        assert res.label == CATEGORIES[want]
        # The rationale states how the label was made, not generated text.
        assert res.text.startswith("log-likelihood label (calibrated)" if calibrate
                                   else "log-likelihood label (uncalibrated)")
        assert all(f"{c}=" in res.text for c in CATEGORIES)
    want = brute_force_choice(tiny_lm, char_tokenizer, items[3].prompt, "Final Decision: [[",
                              [d + "]]" for d in DECISIONS], free_verify)
    assert results[3].label == DECISIONS[want]
    assert results[4].status in (OK, UNPARSEABLE)  # a random model may generate nothing usable
    if results[4].status == OK:
        assert results[4].label in ("exact", "semantic", "cannot_tell")
        if results[4].label != "cannot_tell":  # body (after "Exact pattern:"/"Semantic:") within the budget
            assert len(results[4].text.split(":", 1)[1].strip()) <= 6
    assert judge.tally.n_requests == 5

    # Same model (same weights) and inputs: everything from the cache, no forward pass.
    again = make_judge(cfg, loader=lambda: (_ for _ in ()).throw(AssertionError("must not load")),
                       model_id=judge.model_id)
    assert [(r.status, r.label, r.text) for r in again.judge(items, progress=False)] == \
        [(r.status, r.label, r.text) for r in results]
    assert again.tally.n_requests == 0 and again.tally.n_cache_hits == 5


def test_hf_local_loader_is_called_lazily(tiny_lm, char_tokenizer):
    calls = []

    def loader():
        calls.append(1)
        return tiny_lm, char_tokenizer

    judge = make_judge(JudgeConfig(backend="hf_local", cache_dir=None, hf_max_new_tokens=2), loader=loader,
                       model_id="tiny")
    assert calls == []
    res = judge.judge([verify_item(1, 'Exact pattern: "="', [span("a")])], progress=False)
    assert calls == [1] and res[0].status == OK and res[0].label in DECISIONS


def test_sync_wrapper_works_inside_a_running_loop():
    import asyncio

    judge = make_judge(JudgeConfig(backend="lexical"))

    async def notebook_cell():
        return judge.judge([rule_item(1, -1, 2, ["a"], "b")], progress=False)

    assert asyncio.run(notebook_cell())[0].status == DECLINED


@pytest.mark.parametrize("field, value", [("backend", "gpt"), ("temperature", -1.0), ("top_p", 0.0),
                                          ("concurrency", 0), ("max_tokens", 0), ("api_key_env", "KEY=sk-123"),
                                          ("lexical_min_share", 1.5), ("timeout_s", 0.0)])
def test_config_validation_names_the_field(field, value):
    with pytest.raises(ValueError, match=f"judge.{field}="):
        JudgeConfig(**{field: value})


def test_config_validation_never_echoes_a_key():
    with pytest.raises(ValueError) as err:
        JudgeConfig(api_key_env="sk-secret=1")
    assert "sk-secret" not in str(err.value)


def test_replay_needs_a_path():
    with pytest.raises(ValueError, match="replay_path"):
        JudgeConfig(backend="replay")


def test_equal_prompts_are_judged_once_and_each_item_keeps_its_key(tiny_lm, char_tokenizer, tmp_path):
    same_a, same_b = rule_item(1, -1, 2, ["a premise"], "a conclusion"), rule_item(5, -1, 6, ["a premise"], "a conclusion")
    other = rule_item(1, -1, 3, ["a premise"], "another conclusion")
    judge = make_judge(JudgeConfig(backend="hf_local", cache_dir=None), model=tiny_lm, tokenizer=char_tokenizer)
    out = judge.judge([same_a, other, same_b], progress=False)
    assert judge.tally.n_requests == 2
    assert [r.key for r in out] == [same_a.key, other.key, same_b.key]
    assert (out[0].label, out[0].text) == (out[2].label, out[2].text)
    # Human labels belong to rules, not to their wording: replay never merges items.
    csv = tmp_path / "h.csv"
    csv.write_text("p1,p2,q,category\n1,-1,2,Strict\n5,-1,6,No\n")
    replayed = make_judge(JudgeConfig(backend="replay", replay_path=str(csv))).judge([same_a, same_b], progress=False)
    assert [r.label for r in replayed] == ["Strict", "No"]
