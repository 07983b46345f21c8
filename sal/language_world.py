"""A synthetic language with planted implications whose truth is known.

Concepts are disjoint sets of word tokens ("c07_2" is word 2 of concept 7); filler words
("f013") belong to no concept. Every planted relation has its own premise concepts (one, or
two) and its own conclusion concept, shared with no other relation:

* the premises *complete* at position t when the word at t belongs to the premise concept
  (one premise), or when the words at t-1 and t belong to the two premise concepts, in either
  order (two premises);
* then the word at t+1 belongs to the conclusion concept with probability ``strength``:
  1 for Strict, drawn in ``plausible_strength`` for Plausible. For No relations nothing is
  forced: the next word is drawn like any other, so the conclusion keeps its base rate.

The rule is applied at every position, whatever put the premise words there, so it holds in
the text exactly (``conditional_frequencies`` measures it). To make premises meet often enough
to be learnt, a free position starts a *premise event* (the premise words of a random
relation) with probability ``premise_event_rate``; the other positions draw a random concept
word (``concept_rate``) or a filler word. Background concepts belong to no relation.

The shuffled twin (``shuffle_documents``) permutes the words inside each document: the same
words per document (unigram counts exactly equal), no implication left in the order.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import pandas as pd

from sal.config.choices import SOUNDNESS_CATEGORIES

KINDS = SOUNDNESS_CATEGORIES
"""Relation kinds, named like the judge's categories so labels feed SAL unchanged."""

FILLER = -1
"""Concept id of filler words (and of positions outside a document)."""


class Language(NamedTuple):
    """The generator's ground truth."""

    relations: pd.DataFrame
    """One row per planted relation: relation, kind, premises (tuple of 1-2 concept ids),
    conclusion (concept id), strength (P(conclusion next | premises complete); for No, the
    conclusion's base rate)."""
    concept_words: list[list[str]]
    """Words of each concept, by concept id."""
    filler_words: list[str]
    """Words of no concept."""
    concept_rate: float
    """Share of free positions drawing a concept word."""
    premise_event_rate: float
    """Probability that a free position starts a premise event."""

    @property
    def n_concepts(self) -> int:
        return len(self.concept_words)

    @property
    def vocabulary(self) -> list[str]:
        return [w for words in self.concept_words for w in words] + list(self.filler_words)

    def concept_of_word(self) -> dict[str, int]:
        """word -> concept id (FILLER for filler words)."""
        out = {w: c for c, words in enumerate(self.concept_words) for w in words}
        out.update({w: FILLER for w in self.filler_words})
        return out

    def relation_of_concept(self) -> dict[int, int]:
        """concept id -> the relation it belongs to (premise or conclusion); background concepts are absent."""
        out = {}
        for r in self.relations.itertuples():
            for c in (*r.premises, r.conclusion):
                out[int(c)] = int(r.relation)
        return out


class Corpus(NamedTuple):
    """Documents of a language, as words and as concept ids."""

    words: list[list[str]]
    """Each document's words."""
    concepts: list[np.ndarray]
    """int [len] concept id of each word (FILLER for filler)."""
    triggers: list[np.ndarray]
    """int [len] the relation whose premises complete at each position, -1 where none does."""

    def texts(self) -> list[str]:
        return [" ".join(doc) for doc in self.words]


def make_language(cfg, seed: int) -> Language:
    """Planted relations and vocabulary from a ``NetworkValidationConfig`` (duck-typed)."""
    rng = np.random.default_rng([seed, 1])
    rows, next_concept = [], 0
    n_two = round(cfg.n_relations_per_kind * cfg.two_premise_fraction)
    for kind in KINDS:
        for i in range(cfg.n_relations_per_kind):
            n_premises = 2 if i < n_two else 1
            premises = tuple(range(next_concept, next_concept + n_premises))
            conclusion = next_concept + n_premises
            next_concept = conclusion + 1
            strength = 1.0 if kind == "Strict" else float(rng.uniform(*cfg.plausible_strength)) if kind == "Plausible" else np.nan
            rows.append(dict(relation=len(rows), kind=kind, premises=premises, conclusion=conclusion, strength=strength))
    n_concepts = next_concept + cfg.n_background_concepts
    relations = pd.DataFrame(rows)
    # A No relation forces nothing: its conclusion follows at the base rate of any concept.
    relations.loc[relations.kind == "No", "strength"] = _base_rate(cfg.concept_rate, cfg.premise_event_rate, n_concepts)
    concept_words = [[f"c{c:02d}_{j}" for j in range(cfg.words_per_concept)] for c in range(n_concepts)]
    filler_words = [f"f{j:03d}" for j in range(cfg.n_filler_words)]
    return Language(relations, concept_words, filler_words, float(cfg.concept_rate), float(cfg.premise_event_rate))


def _base_rate(concept_rate: float, event_rate: float, n_concepts: int) -> float:
    """P(a given concept | a free position that starts no premise event)."""
    return (1 - event_rate) * concept_rate / n_concepts


def _completed(lang_tables, prev_c: int, cur_c: int) -> int:
    """Relation whose premises complete at a position with concepts (prev_c, cur_c), or -1."""
    one, two = lang_tables
    r = one.get(cur_c, -1)
    if r >= 0:
        return r
    return two.get((prev_c, cur_c), -1)


def _tables(lang: Language):
    one, two = {}, {}
    for r in lang.relations.itertuples():
        if len(r.premises) == 1:
            one[int(r.premises[0])] = int(r.relation)
        else:
            a, b = (int(x) for x in r.premises)
            two[(a, b)] = two[(b, a)] = int(r.relation)
    return one, two


def generate_corpus(lang: Language, n_docs: int, doc_len: int, seed: int) -> Corpus:
    """``n_docs`` documents of ``doc_len`` words, seeded and deterministic."""
    rng = np.random.default_rng([seed, 2])
    tables = _tables(lang)
    rel = lang.relations
    kinds, strengths = rel.kind.to_numpy(), rel.strength.to_numpy(dtype=float)
    conclusions, premises = rel.conclusion.to_numpy(), list(rel.premises)
    n_words = len(lang.concept_words[0])
    all_words, all_concepts, all_triggers = [], [], []
    for _ in range(n_docs):
        concepts = np.full(doc_len, FILLER, dtype=np.int64)
        words = np.empty(doc_len, dtype=np.int64)  # word index within its concept (or filler index)
        triggers = np.full(doc_len, -1, dtype=np.int64)
        pending: list[int] = []  # premise concepts still to emit for an event
        for t in range(doc_len):
            prev_r = triggers[t - 1] if t > 0 else -1
            if prev_r >= 0 and kinds[prev_r] != "No":
                # The premises completed at t-1: the rule decides this word (and ends any event).
                pending = []
                if rng.random() < strengths[prev_r]:
                    concepts[t] = conclusions[prev_r]
                else:
                    concepts[t] = _background(rng, lang, exclude=conclusions[prev_r])
            elif pending:
                concepts[t] = pending.pop(0)
            elif rng.random() < lang.premise_event_rate:
                r = int(rng.integers(len(rel)))
                pending = list(rng.permutation(premises[r]))
                concepts[t] = pending.pop(0)
            else:
                concepts[t] = _background(rng, lang)
            is_filler = concepts[t] == FILLER
            words[t] = rng.integers(len(lang.filler_words) if is_filler else n_words)
            triggers[t] = _completed(tables, int(concepts[t - 1]) if t > 0 else FILLER, int(concepts[t]))
        all_concepts.append(concepts)
        all_triggers.append(triggers)
        all_words.append([lang.filler_words[w] if c == FILLER else lang.concept_words[c][w]
                          for c, w in zip(concepts.tolist(), words.tolist())])
    return Corpus(all_words, all_concepts, all_triggers)


def _background(rng, lang: Language, exclude: int | None = None) -> int:
    """A free position's concept: a random concept with probability concept_rate, else filler."""
    if rng.random() >= lang.concept_rate:
        return FILLER
    c = int(rng.integers(lang.n_concepts))
    while c == exclude:  # a failed plausible relation must not emit its conclusion by chance
        c = int(rng.integers(lang.n_concepts))
    return c


def shuffle_documents(corpus: Corpus, seed: int) -> Corpus:
    """Permute the words inside each document: identical word counts per document, and
    premises no longer predict what follows them. Triggers are recomputed as -1 (unknown)."""
    rng = np.random.default_rng([seed, 3])
    words, concepts, triggers = [], [], []
    for doc, conc in zip(corpus.words, corpus.concepts):
        perm = rng.permutation(len(doc))
        words.append([doc[i] for i in perm])
        concepts.append(conc[perm])
        triggers.append(np.full(len(doc), -1, dtype=np.int64))
    return Corpus(words, concepts, triggers)


def conditional_frequencies(lang: Language, corpus: Corpus) -> pd.DataFrame:
    """Per relation: how often its premises complete (``n_triggers``) and the measured
    P(conclusion word next | premises complete) (``p_next``), next to the planted strength."""
    hits = np.zeros(len(lang.relations))
    n = np.zeros(len(lang.relations))
    conclusions = lang.relations.conclusion.to_numpy()
    for conc, trig in zip(corpus.concepts, corpus.triggers):
        at = np.flatnonzero(trig[:-1] >= 0)
        r = trig[at]
        np.add.at(n, r, 1)
        np.add.at(hits, r, conc[at + 1] == conclusions[r])
    out = lang.relations[["relation", "kind", "premises", "conclusion", "strength"]].copy()
    out["n_triggers"] = n.astype(int)
    out["p_next"] = np.where(n > 0, hits / np.maximum(n, 1), np.nan)
    return out


def rule_set_prefixes(lang: Language, corpus: Corpus, trigger_fraction: float, seed: int,
                      min_len: int = 4) -> list[str]:
    """One prefix per document, read at its last word: with probability ``trigger_fraction``
    it ends where some relation's premises complete (before the word they decide), else at a
    random position. Returns the prefix texts."""
    rng = np.random.default_rng([seed, 4])
    out = []
    for doc, trig in zip(corpus.words, corpus.triggers):
        candidates = np.flatnonzero(trig[min_len - 1:-1] >= 0) + min_len - 1
        if len(candidates) and rng.random() < trigger_fraction:
            end = int(rng.choice(candidates))
        else:
            end = int(rng.integers(min_len - 1, len(doc) - 1))
        out.append(" ".join(doc[:end + 1]))
    return out
