import collections
import os
import subprocess
import sys
import textwrap

import pandas as pd
import pytest

from sal.config.data import DataConfig, GenerationConfig
from sal.data.corpus import generate_responses, hf_generator, select_corpus_questions, stratified_rule_set
from sal.data.sources import load_questions, normalise_question


def test_offline_sources_are_read_and_deduplicated():
    rows = load_questions(["math_test", "math500"])  # MATH-500 is a subset of the MATH test set
    math_test = load_questions(["math_test"])
    assert len(rows) == len(math_test) == len({normalise_question(r["question"]) for r in rows})
    assert {r["source"] for r in rows} == {"math_test"}


def test_rule_set_is_stratified_by_type_and_level():
    data = DataConfig(rule_set_source="math_test", rule_set_per_stratum=3)
    rows = stratified_rule_set(data)
    strata = collections.Counter((r["type"], r["level"]) for r in rows)
    assert len(strata) == 35 and set(strata.values()) == {3}  # 7 subjects x 5 levels
    full = stratified_rule_set(DataConfig(rule_set_source="math_test", rule_set_per_stratum=100))
    # Appendix D: 100 per stratum, smaller strata whole; the paper reports 3267 samples.
    assert 3000 <= len(full) <= 3500
    assert stratified_rule_set(data) == rows  # seeded


def test_max_questions_samples_without_replacement():
    data = DataConfig(sources=["gsm8k_test"], max_questions=10)
    rows = select_corpus_questions(data)
    assert len(rows) == 10 and len({r["question"] for r in rows}) == 10


def _fake_generator(calls, fail_at=None):
    def run(prompts, batch_index, caps):
        if batch_index == fail_at:
            raise KeyboardInterrupt("killed")
        calls.append(batch_index)
        return [f"response {batch_index}:{len(p)}" for p in prompts], [True] * len(prompts)
    return run


def test_generation_resumes_after_a_kill_without_duplicates(tmp_path):
    questions = select_corpus_questions(DataConfig(sources=["gsm8k_test"], max_questions=10))
    gen = GenerationConfig(batch_size=3)
    reference = generate_responses(questions, _fake_generator([]), tmp_path / "ref", gen)
    calls = []
    with pytest.raises(KeyboardInterrupt):
        generate_responses(questions, _fake_generator(calls, fail_at=2), tmp_path / "run", gen)
    assert calls == [0, 1]
    calls.clear()
    resumed = generate_responses(questions, _fake_generator(calls), tmp_path / "run", gen)
    assert calls == [2, 3]  # only the unfinished batches run again
    pd.testing.assert_frame_equal(resumed, reference)
    assert resumed["idx"].tolist() == list(range(10))


def test_generation_killed_by_sigkill_resumes(tmp_path):
    script = textwrap.dedent(f"""
        import os, signal
        from sal.config.data import DataConfig, GenerationConfig
        from sal.data.corpus import generate_responses, select_corpus_questions
        qs = select_corpus_questions(DataConfig(sources=["gsm8k_test"], max_questions=10))
        def gen(prompts, b, caps):
            if b == 2 and os.environ.get("KILL"):
                os.kill(os.getpid(), signal.SIGKILL)
            return ["r%d" % b] * len(prompts), [True] * len(prompts)
        generate_responses(qs, gen, {str(tmp_path)!r}, GenerationConfig(batch_size=3))
    """)
    env = dict(os.environ, KILL="1")
    assert subprocess.run([sys.executable, "-c", script], env=env).returncode == -9
    assert sorted(p.name for p in (tmp_path / "batches").iterdir()) == ["batch_000000.parquet", "batch_000001.parquet"]
    env.pop("KILL")
    subprocess.run([sys.executable, "-c", script], env=env, check=True)
    df = pd.read_parquet(tmp_path / "corpus.parquet")
    assert df["idx"].tolist() == list(range(10)) and df["response"].tolist() == ["r0"] * 3 + ["r1"] * 3 + ["r2"] * 3 + ["r3"]


def test_hf_generation_on_tiny_model_gives_nonempty_responses(tiny_model, tmp_path):
    model, tok = tiny_model
    questions = select_corpus_questions(DataConfig(sources=["math_test"], max_questions=5))
    gen = GenerationConfig(batch_size=2, max_new_tokens=6, temperature=0.0)
    df = generate_responses(questions, hf_generator(model, tok, gen), tmp_path, gen)
    assert len(df) == 5 and (df["response"].str.len() > 0).all()
    assert set(df.columns) >= {"question", "response", "finished", "n_tokens", "source", "type", "level"}


def test_one_document_budget_caps_each_response_by_what_its_question_leaves(tiny_model, tmp_path):
    """question + response fit in data.max_doc_tokens; a question that fills the budget gets
    no response; a random model (no end of sequence) finishes nothing within its cap."""
    from sal.data.corpus import DOC_SEPARATOR, DocumentBudget

    model, tok = tiny_model
    questions = select_corpus_questions(DataConfig(sources=["gsm8k_test"], max_questions=4))
    n_question = [len(tok(q["question"] + DOC_SEPARATOR)["input_ids"]) for q in questions]
    max_doc = sorted(n_question)[1] + 5  # the shortest question leaves >= 5 tokens, the longest none
    gen = GenerationConfig(batch_size=4, max_new_tokens=8, temperature=0.0)
    budget = DocumentBudget(tok, max_doc, gen.max_new_tokens)
    expected_caps = [max(0, min(8, max_doc - n)) for n in n_question]
    assert budget.new_tokens([q["question"] for q in questions]) == expected_caps and 0 in expected_caps
    seen_caps = []
    inner = hf_generator(model, tok, gen)

    def spy(prompts, b, caps):
        seen_caps.append(list(caps))
        return inner(prompts, b, caps)

    df = generate_responses(questions, spy, tmp_path, gen, budget=budget)
    assert seen_caps == [expected_caps]
    assert df.n_tokens.tolist() == budget.n_tokens([f"{q}{DOC_SEPARATOR}{r}" for q, r in zip(df.question, df.response)])
    assert not df.finished.any()
    assert (df.response[[c == 0 for c in expected_caps]] == "").all()


def test_a_response_that_ends_by_itself_is_finished_unless_the_document_overflows(tmp_path):
    class CharTokenizer:  # one token per character
        def __call__(self, texts):
            return {"input_ids": [list(t) for t in texts]}

    from sal.data.corpus import DocumentBudget

    questions = [{"question": q, "source": "s", "type": "", "level": ""} for q in ("ab", "abcd", "abcdef")]
    budget = DocumentBudget(CharTokenizer(), max_doc_tokens=9, max_new_tokens=5)
    assert budget.new_tokens([q["question"] for q in questions]) == [5, 3, 1]  # 9 - len(q + "\n\n")

    def gen(prompts, b, caps):  # ends by itself everywhere, but the last answer is longer than allowed
        return ["x", "yy", "zzz"], [True, True, True]

    df = generate_responses(questions, gen, tmp_path, GenerationConfig(batch_size=3), budget=budget)
    assert df.n_tokens.tolist() == [5, 8, 11] and df.finished.tolist() == [True, True, False]


def test_offline_default_writes_nonempty_responses_for_every_requested_row(tmp_path):
    from sal.models import load_named_model

    model, tok = load_named_model("smollm2-135m")  # the packaged GGUF, no network
    questions = select_corpus_questions(DataConfig(sources=["gsm8k_test"], max_questions=3, max_question_chars=200))
    gen = GenerationConfig(batch_size=2, max_new_tokens=8, temperature=0.6)
    df = generate_responses(questions, hf_generator(model, tok, gen), tmp_path, gen)
    assert df["idx"].tolist() == [0, 1, 2] and (df["response"].str.strip().str.len() > 0).all()
    assert df["question"].tolist() == [q["question"] for q in questions]


@pytest.mark.parametrize("text, cut, stopped", [
    (" think </think> <answer> 4 </answer> and more", " think </think> <answer> 4 </answer>", True),
    (" 2+2=4 User: what next? </answer>", " 2+2=4 ", True),          # a new turn starts first
    (" 2+2=4 Assistant: Human: hi", " 2+2=4 ", True),
    (" still thinking", " still thinking", False),
])
def test_responses_end_at_the_first_stop_string(text, cut, stopped):
    from sal.data.corpus import cut_at_stop
    from sal.data.prompts import stop_strings

    assert cut_at_stop(text, stop_strings("r1_zero")) == (cut, stopped)
