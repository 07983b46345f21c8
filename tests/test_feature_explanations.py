"""sal.feature_explanations: explain and verify features, Table 3, the allowed set."""

from __future__ import annotations

import json

import pandas as pd
import pytest
import torch
from list_tokenizer import ListTokenizer

from sal.config.judge import InterpretConfig, JudgeConfig
from sal.feature_explanations import interpret_features
from sal.judge import make_judge
from sal.top_spans import TopSpanCollector


def make_corpus():
    """Feature 0 fires on every " =" (Exact pattern), feature 1 on random tokens (Cannot Tell),
    feature 2 fires 10 times only (not sufficiently activated), feature 3 never (dead)."""
    g = torch.Generator().manual_seed(3)
    docs, batches = {}, []
    for n in range(16):
        ids = torch.randint(1, 10, (2, 16), generator=g)
        ids[:, 0] = 0
        mask = ids != 0
        feats = torch.zeros(2, 16, 4)
        feats[..., 0] = (ids == 3).float() * (1 + torch.rand(2, 16, generator=g))
        feats[..., 1] = (torch.rand(2, 16, generator=g) < 0.3).float() * torch.rand(2, 16, generator=g) * mask
        if n < 5:
            feats[0, 1:3, 2] = 1.0
        for b in range(2):
            docs[2 * n + b] = ids[b].tolist()
        batches.append((feats, ids, mask, [2 * n, 2 * n + 1]))
    return batches, docs


def test_interpret_features_with_lexical_judge(tmp_path):
    batches, docs = make_corpus()
    col = TopSpanCollector(4, k=30, window=4)
    for b in batches:
        col.update(*b)
    counts = col.counts_C.tolist()
    assert counts[0] >= 30 and counts[1] >= 30 and counts[2] == 10 and counts[3] == 0
    judge = make_judge(JudgeConfig(backend="lexical"))
    res = interpret_features(col, judge, ListTokenizer(), tmp_path, InterpretConfig(activation_unit="tokens"),
                             tokens_by_doc=docs, progress=False)
    frame = pd.read_parquet(tmp_path / "features" / "explanations.parquet")
    assert list(frame.feature) == [0, 1, 2, 3] and list(frame.n_activations) == counts
    assert list(frame.n_documents) == col.doc_counts_C.tolist()
    row0, row1 = frame.iloc[0], frame.iloc[1]
    assert (row0.summary_kind, row0.explanation, row0.decision, row0.explainable) == (
        "exact", 'Exact pattern: "="', "Yes", True)
    assert (row1.summary_kind, row1.explainable) == ("cannot_tell", False) and pd.isna(row1.decision)
    assert list(frame.status) == ["ok", "ok", "rare", "dead"]
    assert res.allowed == [0]
    table3 = json.loads((tmp_path / "features" / "table3.json").read_text())
    assert table3 == res.table3
    assert table3["dead_rate"] == 0.25 and table3["n_sufficient"] == 2 and table3["explainable_rate"] == 0.5
    assert table3["decision_shares"]["Yes"] == 0.5 and table3["decision_shares"]["Cannot Tell"] == 0.5
    spans = pd.read_parquet(tmp_path / "features" / "top_spans.parquet")
    assert set(spans.feature) == {0, 1} and (spans[spans.feature == 0].token == " =").all()
    assert len(spans[spans.feature == 0]) == 30
    assert spans.layers.isna().all()  # activations given already reduced over the layers: none recorded


def test_top_spans_record_the_layers_fired_in(tmp_path):
    """Per-layer activations: feature 0 fires in both layers, feature 1 in the first only."""
    batches, docs = make_corpus()
    col = TopSpanCollector(4, k=30, window=4, layers=[3, 7])
    for feats, *rest in batches:
        col.update(torch.stack([feats, feats * torch.tensor([1.0, 0, 1, 1])], dim=2), *rest)
    interpret_features(col, make_judge(JudgeConfig(backend="lexical")), ListTokenizer(), tmp_path,
                       InterpretConfig(activation_unit="tokens"), tokens_by_doc=docs, progress=False)
    spans = pd.read_parquet(tmp_path / "features" / "top_spans.parquet")
    assert {f: {tuple(ls) for ls in g.layers} for f, g in spans.groupby("feature")} == {0: {(3, 7)}, 1: {(3,)}}


@pytest.mark.parametrize("unit, sufficient", [("documents", [0, 1]), ("tokens", [0, 1, 2])])
def test_sufficiently_activated_counts_documents_by_default(tmp_path, unit, sufficient):
    """Feature 2 fires on 10 tokens of 5 documents: at a threshold of 6 it is sufficiently
    activated when tokens count, not when documents do (Appendix C.2's reading)."""
    batches, docs = make_corpus()
    col = TopSpanCollector(4, k=30, window=4)
    for b in batches:
        col.update(*b)
    assert (col.counts_C[2].item(), col.doc_counts_C[2].item()) == (10, 5)
    config = InterpretConfig(min_activations=6, **({} if unit == "documents" else {"activation_unit": unit}))
    res = interpret_features(col, make_judge(JudgeConfig(backend="lexical")), ListTokenizer(), tmp_path, config,
                             tokens_by_doc=docs, progress=False)
    assert list(res.explanations.feature[res.explanations.sufficient]) == sufficient
    assert res.table3["n_sufficient"] == len(sufficient) and res.table3["n_documents"] == 32
    assert res.table3["activation_unit"] == unit


def test_unanswered_features_are_reported_not_defaulted(tmp_path):
    batches, docs = make_corpus()
    col = TopSpanCollector(4, k=30, window=4)
    for b in batches:
        col.update(*b)
    answers = tmp_path / "answers.csv"
    answers.write_text('feature,explanation,decision\n0,"Exact pattern: ""=""",Maybe\n')  # nothing for feature 1
    judge = make_judge(JudgeConfig(backend="replay", replay_path=str(answers)))
    res = interpret_features(col, judge, ListTokenizer(), tmp_path, InterpretConfig(min_activations=20), tokens_by_doc=docs,
                             progress=False)
    assert list(res.explanations.status[:2]) == ["ok", "failed"]
    assert res.problems == [("explain/1", "failed", res.explanations.error[1])]
    assert res.table3["n_unanswered"] == 1 and res.table3["n_judged"] == 1
    assert res.table3["explainable_rate"] == 1.0 and res.allowed == [0]


@pytest.mark.parametrize("field, value", [("top_k", 0), ("explain_top", 31), ("min_activations", 0), ("span_window", 0),
                                          ("activation_unit", "sentences")])
def test_interpret_config_validation(field, value):
    with pytest.raises(ValueError, match=f"interpret.{field}="):
        InterpretConfig(**{field: value})
