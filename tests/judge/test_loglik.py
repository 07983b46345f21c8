"""AnswerScorer (sal.judge.loglik): prefix reuse and the token-tree forward are exact
rewrites of one full forward per (prompt, answer)."""

from __future__ import annotations

import warnings

import pytest
import torch

from sal.config.judge import JudgeConfig
from sal.judge import make_judge, rule_item
from sal.judge.loglik import AnswerScorer, common_prefix_len, tree_attention_mask


def brute_force(model, prompt: list[int], answer: list[int]) -> float:
    with torch.no_grad():
        logp = model(torch.tensor([prompt + answer])).logits[0].float().log_softmax(-1)
    return sum(float(logp[len(prompt) - 1 + j, t]) for j, t in enumerate(answer))


def test_tree_mask_by_hand():
    mask = tree_attention_mask(2, [2, 1], torch.float32)
    allowed = (mask[0, 0] == 0).int().tolist()
    # prompt p0 p1 | answer A: a0 a1 | answer B: b0
    assert allowed == [[1, 1, 1, 0, 0],
                       [1, 1, 1, 1, 0],
                       [1, 1, 0, 0, 1]]
    assert mask.shape == (1, 1, 3, 5) and float(mask.min()) == torch.finfo(torch.float32).min
    padded = tree_attention_mask(3, [1, 1], torch.float32, torch.tensor([[True, True, True], [True, False, True]]))
    assert (padded[:, 0] == 0).int().tolist() == [[[1, 1, 1, 1, 0], [1, 1, 1, 0, 1]],
                                                  [[1, 0, 1, 1, 0], [1, 0, 1, 0, 1]]]


def test_common_prefix_len():
    assert common_prefix_len([1, 2, 3], [1, 2, 4, 5]) == 2
    assert common_prefix_len([1, 2], [1, 2, 3]) == 2
    assert common_prefix_len([], [1]) == 0


def random_prompts(vocab: int, head_len: int, tail_lens, seed: int = 0) -> list[list[int]]:
    g = torch.Generator().manual_seed(seed)
    head = torch.randint(0, vocab, (head_len,), generator=g).tolist()
    return [head + torch.randint(0, vocab, (n,), generator=g).tolist() for n in tail_lens]


ANSWERS = [[5], [7, 8, 9], [10, 11], [7, 8, 12]]  # shared first tokens, unequal lengths


def test_one_prompt_at_a_time_equals_full_forwards(tiny_lm):
    prompts = random_prompts(tiny_lm.config.vocab_size, 40, (7, 3, 12))
    prompts.append(prompts[2][:-1])  # a prompt that is a prefix of the previous one
    prompts.append(list(prompts[3]))  # the same prompt twice
    scorer = AnswerScorer(tiny_lm)
    computed = []
    for prompt in prompts:
        before = scorer.tokens_computed
        with torch.no_grad():
            got = scorer.score([prompt], ANSWERS)[0]
        computed.append(scorer.tokens_computed - before - sum(len(a) - 1 for a in ANSWERS))  # minus the tree
        assert got == pytest.approx([brute_force(tiny_lm, prompt, a) for a in ANSWERS], abs=1e-4)
    # Only what differs from the previous prompt runs through the model (the head is all but
    # the last token of a lone prompt; the last token always runs).
    assert computed == [47, 3, 12, 1, 1]


@pytest.mark.parametrize("tail_lens", [(7, 3, 12, 1), (5, 5), (9,)])
def test_a_batch_of_prompts_equals_full_forwards(tiny_lm, tail_lens):
    prompts = random_prompts(tiny_lm.config.vocab_size, 30, tail_lens, seed=len(tail_lens))
    scorer = AnswerScorer(tiny_lm)
    with torch.no_grad():
        scorer.score(random_prompts(tiny_lm.config.vocab_size, 30, (4,), seed=99), ANSWERS)  # another head kept
        got = scorer.score(prompts, ANSWERS)
    want = [[brute_force(tiny_lm, p, a) for a in ANSWERS] for p in prompts]
    assert len(got) == len(prompts)
    for g, w in zip(got, want):
        assert g == pytest.approx(w, abs=1e-4)


def test_prompts_with_no_common_head(tiny_lm):
    prompts = [[3, 4, 5], [9, 8], [7]]
    with torch.no_grad():
        got = AnswerScorer(tiny_lm).score(prompts, ANSWERS)
    for p, g in zip(prompts, got):
        assert g == pytest.approx([brute_force(tiny_lm, p, a) for a in ANSWERS], abs=1e-4)


def test_extend_continues_after_a_prompt(tiny_lm):
    prompt, more = list(range(3, 20)), [4, 5, 6]
    scorer = AnswerScorer(tiny_lm)
    with torch.no_grad():
        scorer.score([prompt], ANSWERS)
        last, cache = scorer.prompt(prompt)
        after = scorer.extend(more, cache)
        full = tiny_lm(torch.tensor([prompt + more])).logits[0, -1].float().log_softmax(-1)
        alone = tiny_lm(torch.tensor([prompt])).logits[0, -1].float().log_softmax(-1)
    assert torch.allclose(last, alone, atol=1e-4) and torch.allclose(after, full, atol=1e-4)


def test_judging_uses_the_current_cache_api(tiny_lm, char_tokenizer):
    """No FutureWarning from transformers about renamed cache arguments."""
    judge = make_judge(JudgeConfig(backend="hf_local", cache_dir=None), model=tiny_lm, tokenizer=char_tokenizer)
    with warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)
        warnings.simplefilter("error", DeprecationWarning)
        out = judge.judge([rule_item(1, -1, 2, ["a premise"], "a conclusion")], progress=False)
    assert out[0].status == "ok"


@pytest.mark.parametrize("calibrate", [True, False])
def test_batched_judging_gives_the_labels_of_one_at_a_time(tiny_lm, char_tokenizer, monkeypatch, calibrate):
    from sal.judge.hf_local import HFLocalJudge

    items = [rule_item(i, -1, i + 1, [f"premise number {i}"], f"conclusion {i * 7}") for i in range(5)]
    items += [rule_item(i, i + 2, i + 1, [f"first {i}", f"second {i}"], f"then {i}") for i in range(4)]
    batches: list[int] = []
    real = HFLocalJudge._choice_logliks

    def counting(self, prompts, prefix, choices):
        batches.append(len(prompts))
        return real(self, prompts, prefix, choices)

    monkeypatch.setattr(HFLocalJudge, "_choice_logliks", counting)
    results = {}
    for size in (1, 4):
        batches.clear()
        judge = make_judge(JudgeConfig(backend="hf_local", cache_dir=None, hf_batch_size=size, hf_calibrate=calibrate),
                           model=tiny_lm, tokenizer=char_tokenizer)
        results[size] = [(r.status, r.label, r.text) for r in judge.judge(items, progress=False)]
        n_priors = 2 if calibrate else 0  # one content-free prompt per template
        assert max(batches) == size and sum(batches) == len(items) + n_priors
    assert [r[1] for r in results[1]] == [r[1] for r in results[4]]
    assert all(status == "ok" for status, _, _ in results[4])
