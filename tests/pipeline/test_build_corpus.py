"""The corpus and the rule set are generated together, in shared batches, whichever stage
asks first; each comes back on its own, in its own question order."""

from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

import sal.data.corpus as corpus_mod
from sal.config.schema import register_configs, validate_config
from sal.data.corpus import select_corpus_questions, stratified_rule_set
from sal.pipeline.generate import build_corpus

ROOT = Path(__file__).resolve().parents[2]
register_configs()


class CharTokenizer:
    """One token per character: document lengths are len(text)."""

    def __call__(self, texts):
        return {"input_ids": [list(t) for t in texts]}


@pytest.fixture
def cfg(tmp_path):
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        composed = compose(config_name="train", overrides=["model=tiny-random", f"paths.cache_dir={tmp_path}"])
    return validate_config(composed)


def test_both_sets_come_from_one_joint_generation(cfg, monkeypatch):
    batches = []

    def fake_hf_generator(model, tokenizer, gen):
        def run(prompts, batch_index, caps):
            batches.append(len(prompts))
            return [f"answer to: {p}" for p in prompts], [True] * len(prompts)
        return run

    monkeypatch.setattr(corpus_mod, "hf_generator", fake_hf_generator)
    tok = CharTokenizer()
    rule_set = build_corpus(cfg, "rule_set", model=object(), tokenizer=tok)  # the rule set asked first
    n_corpus, n_rules = len(select_corpus_questions(cfg.data)), len(stratified_rule_set(cfg.data))
    size = cfg.data.generation.batch_size
    assert batches == [min(size, n_corpus + n_rules - i) for i in range(0, n_corpus + n_rules, size)]
    corpus = build_corpus(cfg, "corpus", model=object(), tokenizer=tok)
    assert len(batches) == -(-(n_corpus + n_rules) // size)  # nothing generated the second time
    assert corpus.question.tolist() == [q["question"] for q in select_corpus_questions(cfg.data)]
    assert rule_set.question.tolist() == [q["question"] for q in stratified_rule_set(cfg.data)]
    assert corpus.idx.tolist() == list(range(n_corpus)) and rule_set.idx.tolist() == list(range(n_rules))
    # every response stayed with its own question through the joint batches and the split
    assert all(q in r for df in (corpus, rule_set) for q, r in zip(df.question, df.response))
    with pytest.raises(ValueError, match="unknown corpus kind"):
        build_corpus(cfg, "validation")


def test_the_manifest_records_sources_and_finished_responses(cfg, monkeypatch, tmp_path):
    import json

    from sal.pipeline.generate import corpus_root

    def fake_hf_generator(model, tokenizer, gen):
        def run(prompts, batch_index, caps):  # every other response is cut at its cap
            return ["x" * c for c in caps], [i % 2 == 0 for i in range(len(prompts))]
        return run

    monkeypatch.setattr(corpus_mod, "hf_generator", fake_hf_generator)
    cfg.data.max_doc_tokens = 10_000  # characters here: every question leaves max_new_tokens
    corpus = build_corpus(cfg, "corpus", model=object(), tokenizer=CharTokenizer())
    (manifest_path,) = corpus_root(cfg).glob("*/manifest.json")
    manifest = json.loads(manifest_path.read_text())
    sources = manifest["corpus"]["sources"]
    assert set(sources) == set(cfg.data.sources)
    assert sum(s["selected"] for s in sources.values()) == len(corpus) == manifest["corpus"]["n_documents"]
    assert all(s["read"] >= s["unique"] >= s["short_enough"] >= s["selected"] for s in sources.values())
    assert manifest["corpus"]["n_finished"] == int(corpus.finished.sum()) == (len(corpus) + 1) // 2
    assert manifest["max_doc_tokens"] == cfg.data.max_doc_tokens
    n_new = cfg.data.generation.max_new_tokens
    assert corpus.n_tokens.tolist() == [len(q) + 2 + n_new for q in corpus.question]  # q + "\n\n" + "x" * cap
