"""Validation through real networks: the synthetic language's ground truth, the ground-truth
judge, and (small size) the claim that a network trained on sound text gets a higher SAL and
delta-SAL than its twin trained on the same text shuffled."""

from collections import Counter
from dataclasses import replace

import numpy as np
import pandas as pd
import pytest
import torch

from sal import language_world as lw
from sal import network_validation as nv
from sal.config.validation import NetworkValidationConfig

LANG_CFG = NetworkValidationConfig(n_relations_per_kind=4, words_per_concept=3)


@pytest.fixture(scope="module")
def language():
    lang = lw.make_language(LANG_CFG, seed=3)
    return lang, lw.generate_corpus(lang, n_docs=1500, doc_len=48, seed=7)


# --------------------------------------------------------------------------- the generator
def test_ground_truth_holds_in_the_text(language):
    lang, corpus = language
    freq = lw.conditional_frequencies(lang, corpus)
    assert (freq.n_triggers >= 150).all(), freq
    strict, plausible, no = (freq[freq.kind == k] for k in lw.KINDS)
    assert (strict.p_next == 1.0).all()
    # Plausible: the measured rate is a binomial estimate of the planted strength (4 sigma).
    sigma = np.sqrt(plausible.strength * (1 - plausible.strength) / plausible.n_triggers)
    assert (np.abs(plausible.p_next - plausible.strength) < 4 * sigma).all(), plausible
    assert plausible.strength.between(*LANG_CFG.plausible_strength).all()
    # No: the conclusion keeps its base rate after the premises.
    base = no.strength.iloc[0]
    assert base < 0.02 and (no.p_next < base + 0.02).all(), no


def test_relations_use_disjoint_concepts_and_both_arities(language):
    lang, _ = language
    rel = lang.relations
    used = [c for p, q in zip(rel.premises, rel.conclusion) for c in (*p, q)]
    assert len(used) == len(set(used))
    assert set(rel.premises.map(len)) == {1, 2}
    assert (rel.groupby("kind").size() == LANG_CFG.n_relations_per_kind).all()
    words = [w for ws in lang.concept_words for w in ws]
    assert len(words) == len(set(words)) and not set(words) & set(lang.filler_words)


def test_generator_is_seeded_and_deterministic(language):
    lang, corpus = language
    again = lw.generate_corpus(lw.make_language(LANG_CFG, seed=3), n_docs=1500, doc_len=48, seed=7)
    assert again.texts() == corpus.texts()
    other = lw.generate_corpus(lang, n_docs=1500, doc_len=48, seed=8)
    assert other.texts() != corpus.texts()


def test_shuffling_keeps_unigram_counts_and_breaks_the_implications(language):
    lang, corpus = language
    shuffled = lw.shuffle_documents(corpus, seed=0)
    for a, b in zip(corpus.words, shuffled.words):
        assert Counter(a) == Counter(b)
    assert sum(a != b for a, b in zip(corpus.words, shuffled.words)) > 0.99 * len(corpus.words)
    # Recount the triggers in the shuffled order: strict conclusions no longer follow.
    tables = lw._tables(lang)
    recounted = lw.Corpus(shuffled.words, shuffled.concepts,
                          [np.array([lw._completed(tables, int(c[t - 1]) if t else lw.FILLER, int(c[t]))
                                     for t in range(len(c))]) for c in shuffled.concepts])
    freq = lw.conditional_frequencies(lang, recounted)
    assert (freq[freq.kind == "Strict"].p_next < 0.2).all(), freq


def test_rule_set_prefixes_end_at_premises(language):
    lang, corpus = language
    prefixes = lw.rule_set_prefixes(lang, corpus, trigger_fraction=1.0, seed=0)
    concept_of = lang.concept_of_word()
    premise_concepts = {c for p in lang.relations.premises for c in p}
    assert all(concept_of[p.split()[-1]] in premise_concepts for p in prefixes)
    assert len(prefixes) == len(corpus.words)


def test_word_tokenizer_gives_one_token_per_word_after_bos(language):
    lang, corpus = language
    tok = nv.word_tokenizer(lang.vocabulary)
    text = corpus.texts()[0]
    ids = tok(text)["input_ids"]
    assert ids[0] == tok.bos_token_id and len(ids) == 1 + len(text.split())
    assert tok.convert_ids_to_tokens(ids[1:]) == text.split()


# --------------------------------------------------------------------------- the ground-truth judge
def test_feature_concept_mapping_on_a_hand_built_case():
    # 8 positions; concepts at offsets (-1, 0, +1); filler is -1.
    concepts_NO = torch.tensor([
        [-1, 3, 5], [3, 3, -1], [-1, 3, 5], [7, 3, 5],   # the word is concept 3 (then often 5)
        [2, 4, 5], [4, 6, 5], [9, 8, 5], [-1, -1, -1],    # next word is concept 5, word varies
    ])
    feats_NC = torch.zeros(8, 5)
    feats_NC[0:4, 0] = torch.tensor([1.0, 2.0, 3.0, 4.0])   # on concept 3 words
    feats_NC[[0, 2, 3, 4, 5, 6], 1] = 1.0                     # before concept 5 words
    feats_NC[7, 2] = 5.0                                      # on filler only
    feats_NC[[1, 4, 7], 3] = 1.0                              # mixed: a third at best, any offset
    # feature 4 never fires
    out = nv.map_features_to_concepts(feats_NC, concepts_NO, offsets=[-1, 0, 1], top_k=6, min_purity=0.6)
    got = dict(zip(out.feature, zip(out.concept, out.offset)))
    assert got[0] == (3, 0)  # offset 0 wins over the 3/4 share of concept 5 next
    assert got[1] == (5, 1)
    assert got[2][0] == lw.FILLER and got[3][0] == lw.FILLER and got[4][0] == lw.FILLER
    assert out.set_index("feature").n_active.to_dict() == {0: 4, 1: 6, 2: 1, 3: 3, 4: 0}
    # Next-word names: feature 0 is followed by concept 5 at 3 of its 4 top positions (0.75 >= 0.6),
    # feature 1 at all 6; feature 3 at 1 of 3 (0.33, no name); feature 2 only by the end of a document.
    nxt = out.set_index("feature")
    assert nxt.next_concept.to_dict() == {0: 5, 1: 5, 2: lw.FILLER, 3: lw.FILLER, 4: lw.FILLER}
    assert nxt.next_purity.to_dict() == pytest.approx({0: 0.75, 1: 1.0, 2: 0.0, 3: 1 / 3, 4: 0.0})
    # As conclusions, only explained features stand for a concept: the word's, or the next word's.
    assert nv.conclusion_concepts(out, "word") == {0: 3, 1: 5}
    assert nv.conclusion_concepts(out, "next_word") == {0: 5, 1: 5}


def _toy_language():
    relations = pd.DataFrame([
        dict(relation=0, kind="Strict", premises=(0, 1), conclusion=2, strength=1.0),
        dict(relation=1, kind="Plausible", premises=(3,), conclusion=4, strength=0.7),
        dict(relation=2, kind="No", premises=(5,), conclusion=6, strength=0.01),
    ])
    words = [[f"c{c}"] for c in range(8)]  # concept 7: background
    return lw.Language(relations, words, ["f0"], 0.3, 0.1)


def test_label_rules_applies_the_stated_policy():
    lang = _toy_language()
    # feature f names concept f (feature 9 is unexplained)
    fc = {f: f for f in range(8)} | {9: lw.FILLER}
    rules = pd.DataFrame([
        (0, 1, 2), (1, 0, 2),   # A and B -> C: Strict
        (3, -1, 4),             # Plausible
        (3, 7, 4),              # superset of the premises: still Plausible
        (5, -1, 6),             # planted No
        (0, -1, 2),             # part of the premises: left out
        (2, -1, 0),             # converse: left out
        (0, -1, 0),             # restatement: left out
        (9, -1, 2),             # unexplained feature: left out
        (7, -1, 4), (3, -1, 6), # unrelated concepts: No
    ], columns=["p1", "p2", "q"])
    labels = nv.label_rules(rules, fc, lang, unplanted="no")
    got = {(r.p1, r.p2, r.q): r.category for r in labels.itertuples()}
    assert got == {(0, 1, 2): "Strict", (1, 0, 2): "Strict", (3, -1, 4): "Plausible", (3, 7, 4): "Plausible",
                   (5, -1, 6): "No", (7, -1, 4): "No", (3, -1, 6): "No"}
    # A conclusion feature that sits on concept 3 and is followed by concept 4 concludes 4: the
    # restatement 3 -> 3 becomes relation 1 (Plausible); features without a next-word name keep their word.
    by_next = nv.label_rules(pd.DataFrame([(3, -1, 3), (5, -1, 3), (0, 1, 2)], columns=["p1", "p2", "q"]), fc, lang,
                             conclusion_concept=fc | {3: 4})
    assert {(r.p1, r.p2, r.q): r.category for r in by_next.itertuples()} == {(3, -1, 3): "Plausible", (5, -1, 3): "No",
                                                                             (0, 1, 2): "Strict"}
    planted_only = nv.label_rules(rules, fc, lang, unplanted="drop")
    assert set(planted_only.category) == {"Strict", "Plausible", "No"} and len(planted_only) == 5


def test_named_by_role_counts_features_per_role_and_the_conclusions_named():
    lang = _toy_language()  # relations 0 -> 2 (premises 0, 1), 3 -> 4, 5 -> 6; concept 7: background
    named = pd.DataFrame({"feature": [0, 1, 2, 3, 4, 5], "concept": [0, 0, 1, 4, 4, 7]})
    assert nv.named_by_role(named, lang) == {"n_named_premise": 3, "n_named_conclusion": 2, "n_named_background": 1,
                                             "n_conclusions_named": 1}


def test_ordered_probs_by_hand():
    import scipy.sparse as sp

    # 4 samples x 3 features: feature 0 fires in all; 1 in samples 0-2; 2 in sample 0 (more layers than 0)
    counts = sp.csr_matrix(np.array([[2, 1, 3], [1, 1, 0], [1, 2, 0], [1, 0, 0]]))
    rules = pd.DataFrame({"p1": [0, 0, 0], "p2": [-1, -1, 1], "q": [1, 2, 2]})
    np.testing.assert_allclose(nv.ordered_probs(rules, counts, "none"),
                               [(3 + 1) / (4 + 2), (1 + 1) / (4 + 2), (1 + 1) / (3 + 2)])
    # 0 -> 1: a_0 > a_1 only in sample 0 (2 > 1); ties in sample 1; sample 2 has a_1 > a_0.
    # 0 -> 2 and 0,1 -> 2: in sample 0 the conclusion has more layers (3) than every premise.
    np.testing.assert_allclose(nv.ordered_probs(rules, counts, "strict"), [(1 + 1) / 6, 1 / 6, 1 / 5])
    np.testing.assert_allclose(nv.ordered_probs(rules, counts, "non_strict"), [(2 + 1) / 6, 1 / 6, 1 / 5])


def test_strict_order_reproduces_the_rule_counter():
    import scipy.sparse as sp

    from sal.rules import count_rules

    rng = np.random.default_rng(0)
    x = rng.integers(0, 4, size=(60, 7)) * (rng.random((60, 7)) < 0.5)
    rules = count_rules(sp.csr_matrix(x), max_premises=2, beta=1.0, min_premise_count=1, progress=False)
    assert len(rules) > 20
    np.testing.assert_allclose(nv.ordered_probs(rules, sp.csr_matrix(x), "strict"), rules.prob.to_numpy())


def test_equal_n_sal_draws_the_same_size_from_every_category():
    from sal import metrics

    rng = np.random.default_rng(1)
    a = {"Strict": rng.random(30), "No": rng.random(500)}
    b = {"Strict": np.full(12, 0.95), "No": np.full(40, 0.05)}
    c = {"Strict": np.linspace(0.5, 1, 5), "No": np.linspace(0, 1, 9)[:5]}
    n, got = nv.equal_n_sal({"a": a, "b": b, "c": c, "d": {"Strict": np.ones(7), "No": np.ones(0)}}, n_draws=20)
    assert n == 5 and got["d"] is None
    assert got["b"] == pytest.approx(1.0)  # disjoint bins at any n: JSD of two = 1 bit
    assert got["c"] == pytest.approx(metrics.soundness_aware_level(c))  # already n per category: no draw changes it
    # Same distribution in both categories: the only SAL is small-sample bias, larger at n = 5 than at 30 / 500.
    assert got["a"] > metrics.soundness_aware_level(a) + 0.2


def test_crosscoders_reach_the_target_l0_whatever_the_fixed_alpha_would_give():
    g = torch.Generator().manual_seed(0)
    # activations from 12 sparse sources at 3 layers, d = 16
    codes = (torch.rand(3000, 12, generator=g) < 0.15).float() * torch.rand(3000, 12, generator=g)
    acts_NLD = torch.einsum("nk,lkd->nld", codes, torch.randn(3, 12, 16, generator=g))
    cfg = NetworkValidationConfig(n_features=48, crosscoder_steps=300, crosscoder_batch_tokens=256, target_l0=None)
    _, fixed = nv.train_crosscoder(acts_NLD, cfg, seed=0)
    assert fixed["l0_features"] > 12 and fixed["sparsity_coef"] == cfg.sparsity_coef
    for target in (2.0, 6.0):
        _, stats = nv.train_crosscoder(acts_NLD, replace(cfg, target_l0=target), seed=0)
        assert abs(stats["l0_features"] / target - 1) < 0.25, stats
        assert stats["sparsity_coef"] > cfg.sparsity_coef  # alpha rose from its start to get there


def test_config_rejects_bad_values_readably():
    NetworkValidationConfig()
    with pytest.raises(ValueError, match="analysis.network.plausible_strength"):
        NetworkValidationConfig(plausible_strength=[0.6, 1.0])
    with pytest.raises(ValueError, match="analysis.network.d_model=30 is not divisible"):
        NetworkValidationConfig(d_model=30, n_heads=4)
    with pytest.raises(ValueError, match="analysis.network.unplanted"):
        NetworkValidationConfig(unplanted="maybe")
    with pytest.raises(ValueError, match="analysis.network.target_l0=0"):
        NetworkValidationConfig(target_l0=0)
    with pytest.raises(ValueError, match="analysis.network.layer_activity"):
        NetworkValidationConfig(layer_activity="first")


# --------------------------------------------------------------------------- the claim, small size
SMALL = NetworkValidationConfig(
    seeds=[0, 1, 2], n_layers=2, d_model=32, doc_len=32, n_train_docs=800, train_steps=250, batch_docs=16,
    n_heldout_docs=100, n_activation_docs=80, n_mapping_docs=150, n_rule_samples=400, crosscoder_steps=300,
    n_features=128, n_bootstrap=200, n_permutations=200, figures_dir="")


@pytest.fixture(scope="module")
def small_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("network_validation")
    return nv.run_network_validation(SMALL, out), out


def test_networks_learn_the_language(small_run):
    summary, _ = small_run
    table = pd.DataFrame(summary["per_seed"]).set_index(["seed", "network"])
    for seed in SMALL.seeds:
        sound, shuffled = table.loc[(seed, "sound")], table.loc[(seed, "shuffled")]
        assert sound.heldout_loss < shuffled.heldout_loss
        assert sound.p_conclusion_Strict > 0.6 > 0.2 > shuffled.p_conclusion_Strict


def test_outputs_are_written(small_run):
    summary, out = small_run
    assert (out / "summary.json").exists() and (out / "per_seed.csv").exists()
    for seed in SMALL.seeds:
        assert (out / f"seed_{seed}" / "summary.csv").exists()
    for path in summary["figures"].values():
        assert path.endswith(".png") and (out / path.split("/")[-1]).exists()


def test_sound_text_gives_higher_sal_and_delta_sal_than_shuffled(small_run):
    # The claim as pre-registered (docs/validation.md, "second round", H7): per seed, sound's SAL is
    # computable and significant, and above shuffled's in SAL and delta-SAL, an uncomputable SAL
    # scoring 0 bits.
    summary, _ = small_run
    for seed, verdict in summary["ordering"].items():
        assert verdict["sound_significant"], f"seed {seed}: the sound network's SAL is not computable or not significant"
        assert verdict["sal"], f"seed {seed}: SAL(sound) <= SAL(shuffled): {verdict['scored_sal']}"
        assert verdict["delta_sal"], f"seed {seed}: delta-SAL(sound) <= delta-SAL(shuffled): {verdict['scored_delta_sal']}"
    assert summary["ordering_holds_all_seeds"]


def test_ordering_scores_an_uncomputable_sal_as_zero_and_needs_a_significant_sound_sal():
    def table(sound, sound_p, shuffled, twin):
        return pd.DataFrame({"seed": 0, "network": list(nv.NETWORKS), "sal": [sound, shuffled, twin],
                             "sal_p": [sound_p, None, None]})

    got = nv.ordering_holds(table(0.14, 0.005, None, 0.43))[0]
    assert got["sal"] and got["delta_sal"] and got["sound_significant"] and not got["above_null_twin"]
    assert got["scored_delta_sal"] == pytest.approx({"sound": 0.14 - 0.43, "shuffled": -0.43})
    assert got["not_computable"] == ["shuffled"]
    assert not nv.ordering_holds(table(0.14, 0.2, None, None))[0]["sound_significant"]  # not significant
    empty = nv.ordering_holds(table(None, None, None, None))[0]  # two empty networks: no pass
    assert not (empty["sal"] or empty["sound_significant"])
    assert not nv.ordering_holds(table(0.1, 0.001, 0.2, 0.0))[0]["sal"]
