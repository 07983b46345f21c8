"""One document length (data.max_doc_tokens) drives generation, training, the corpus's
feature pass and the rule-set pass; unfinished responses stay out of the rule set."""

from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

import sal.features
from sal.config.schema import register_configs, validate_config
from sal.crosscoder import Crosscoder
from sal.pipeline import extract
from sal.pipeline.generate import build_corpus

ROOT = Path(__file__).resolve().parents[2]
register_configs()


def _cfg(tmp_path, *overrides):
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        composed = compose(config_name="extract_rules", overrides=["model=tiny-random", f"paths.cache_dir={tmp_path}",
                                                                  *overrides])
    return validate_config(composed)


@pytest.fixture
def spy_feature_pass(monkeypatch):
    lengths = []
    real = sal.features.feature_pass

    def spy(model, tokenizer, crosscoder, texts, layers, max_seq_len, **kw):
        lengths.append(max_seq_len)
        yield from real(model, tokenizer, crosscoder, texts, layers, max_seq_len, **kw)

    monkeypatch.setattr(sal.features, "feature_pass", spy)
    return lengths


@pytest.mark.parametrize("max_doc_tokens", [160, 224])  # 160: one of the four questions is longer
def test_one_length_drives_generation_training_and_both_feature_passes(tmp_path, tiny_model, spy_feature_pass,
                                                                        monkeypatch, max_doc_tokens):
    model, tok = tiny_model
    cfg = _cfg(tmp_path, f"data.max_doc_tokens={max_doc_tokens}", "data.rule_set_unfinished=include",
               "data.max_questions=4", "data.generation.max_new_tokens=64")
    assert cfg.optim.max_tokens_per_instance == max_doc_tokens  # training and its activation cache
    import sal.data.corpus as corpus_mod

    budgets = []

    class SpyBudget(corpus_mod.DocumentBudget):
        def new_tokens(self, questions):
            budgets.append(self.max_doc_tokens)
            return super().new_tokens(questions)

    monkeypatch.setattr(corpus_mod, "DocumentBudget", SpyBudget)
    corpus = build_corpus(cfg, "corpus", model, tok)  # generation: question + response fit
    assert budgets and set(budgets) == {max_doc_tokens}
    caps = corpus_mod.DocumentBudget(tok, max_doc_tokens, 64).new_tokens(list(corpus.question))
    room = [c > 0 for c in caps]
    assert any(room)
    assert (corpus.response[[not r for r in room]] == "").all()  # a question that fills the document alone
    assert (corpus.n_tokens[corpus.finished] <= max_doc_tokens).all()
    crosscoder = Crosscoder(len(cfg.layers.indices), model.config.hidden_size, 16)
    extract.rule_set_layer_counts(cfg, tmp_path, model, tok, crosscoder, list(cfg.layers.indices))
    # the corpus's feature pass
    extract.run_interpretation(cfg, tmp_path, model, tok, crosscoder, list(cfg.layers.indices))
    assert spy_feature_pass == [max_doc_tokens, max_doc_tokens]


def test_setting_the_training_length_apart_is_refused(tmp_path):
    with pytest.raises(ValueError, match="set data.max_doc_tokens only"):
        _cfg(tmp_path, "optim.max_tokens_per_instance=32")
    with pytest.raises(ValueError, match="exceeds tiny-random's context window"):
        _cfg(tmp_path, "data.max_doc_tokens=100000")


def test_unfinished_responses_stay_out_of_the_rule_set_by_default(tmp_path, tiny_model, spy_feature_pass):
    model, tok = tiny_model
    cfg = _cfg(tmp_path, "data.max_questions=4", "data.rule_set_unfinished=exclude")  # the demo presets include
    rule_set = build_corpus(cfg, "rule_set", model, tok)
    path = next((tmp_path / "corpus").glob("*/rule_set.parquet"))
    rule_set.assign(finished=False).to_parquet(path, index=False)  # none finished
    crosscoder = Crosscoder(len(cfg.layers.indices), model.config.hidden_size, 16)
    with pytest.raises(ValueError, match="No rule-set response finished.*rule_set_unfinished=include"):
        extract.rule_set_layer_counts(cfg, tmp_path, model, tok, crosscoder, list(cfg.layers.indices))
    # some finished: only those are read
    marked = rule_set.assign(finished=[i % 3 == 0 for i in range(len(rule_set))])
    marked.to_parquet(path, index=False)
    counts = extract.rule_set_layer_counts(cfg, tmp_path, model, tok, crosscoder, list(cfg.layers.indices))
    assert counts.shape[0] == int(marked.finished.sum())
