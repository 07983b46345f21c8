"""Feature interpretation: streaming top spans, explain/verify, rule judging, agreement."""

from __future__ import annotations

import json
import math

import pandas as pd
import pytest
import torch

from sal.config.judge import InterpretConfig, JudgeConfig
from sal.interpret import TopSpanCollector, agreement, cohen_kappa, interpret_features, judge_rules
from sal.judge import make_judge


class ListTokenizer:
    """Token id i decodes to VOCAB[i]; id 0 is a special token."""

    VOCAB = ["<s>", " a", " b", " =", " x", " 1", " 2", "\n", " y", " z"]
    all_special_ids = [0]

    def decode(self, ids, skip_special_tokens=False):
        return "".join(self.VOCAB[i] for i in ids if not (skip_special_tokens and i == 0))


def brute_force(batches, n_features, k, tau):
    counts = [0] * n_features
    in_docs = [set() for _ in range(n_features)]
    seen = [[] for _ in range(n_features)]
    for feats, ids, mask, docs in batches:
        B, T, C = feats.shape
        for b in range(B):
            for t in range(T):
                for c in range(C):
                    v = float(feats[b, t, c])
                    if mask[b, t] and v > tau:
                        counts[c] += 1
                        in_docs[c].add(int(docs[b]))
                        seen[c].append((v, int(docs[b]), t))
    tops = [sorted(s, reverse=True)[:k] for s in seen]
    return counts, tops, [len(d) for d in in_docs]


def random_batches(n_batches=4, B=3, T=6, C=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    out = []
    for n in range(n_batches):
        feats = torch.relu(torch.randn(B, T, C, generator=g))
        ids = torch.randint(1, 10, (B, T), generator=g)
        mask = torch.ones(B, T, dtype=torch.bool)
        mask[0, -2:] = False  # right padding
        mask[:, 0] = False  # BOS
        out.append((feats, ids, mask, [n * B + b for b in range(B)]))
    return out


@pytest.mark.parametrize("k, chunk", [(1, None), (4, 5), (40, 1)])
def test_collector_matches_brute_force(k, chunk):
    batches = random_batches()
    col = TopSpanCollector(5, k=k, window=3, tau=0.2)
    for b in batches:
        col.update(*b, chunk_tokens=chunk)
    counts, tops, doc_counts = brute_force(batches, 5, k, 0.2)
    assert col.counts_C.tolist() == counts
    assert col.doc_counts_C.tolist() == doc_counts and col.n_docs == sum(len(d) for *_, d in batches)
    assert doc_counts != counts  # the batches do fire features several times per document
    for c in range(5):
        got = [(a, d, p) for a, d, p in zip(col.top_act_CK[c].tolist(), col.top_doc_CK[c].tolist(),
                                            col.top_pos_CK[c].tolist()) if not math.isinf(a)]
        assert [(d, p) for _, d, p in got] == [(d, p) for _, d, p in tops[c]]
        assert [a for a, _, _ in got] == pytest.approx([a for a, _, _ in tops[c]])
    assert col.n_tokens == sum(int(m.sum()) for _, _, m, _ in batches)


def test_collector_merge_and_save_equal_single_pass(tmp_path):
    batches = random_batches(seed=1)
    whole = TopSpanCollector(5, k=4, window=3, store_tokens=True)
    left = TopSpanCollector(5, k=4, window=3, store_tokens=True)
    right = TopSpanCollector(5, k=4, window=3, store_tokens=True)
    for i, b in enumerate(batches):
        whole.update(*b)
        (left if i % 2 else right).update(*b)
    left.merge(right)
    left.save(tmp_path / "c.safetensors")
    loaded = TopSpanCollector.load(tmp_path / "c.safetensors")
    for name in ("counts_C", "doc_counts_C", "top_act_CK", "top_doc_CK", "top_pos_CK"):
        assert torch.equal(getattr(loaded, name), getattr(whole, name)), name
    assert loaded.doc_tokens == whole.doc_tokens and loaded.n_tokens == whole.n_tokens
    assert loaded.n_docs == whole.n_docs == 12


def test_spans_end_at_activating_token():
    tok = ListTokenizer()
    # doc 7: "<s> a b = x 1 <pad>"; feature 0 fires on " =" (pos 3) and " 1" (pos 5).
    ids = torch.tensor([[0, 1, 2, 3, 4, 5, 9]])
    mask = torch.tensor([[True, True, True, True, True, True, False]])
    feats = torch.zeros(1, 7, 2)
    feats[0, 3, 0], feats[0, 5, 0] = 2.0, 3.0
    feats[0, 6, 1] = 9.0  # on padding: must be ignored
    col = TopSpanCollector(2, k=3, window=3, store_tokens=True)
    col.update(feats, ids, mask, [7])
    spans = col.spans(tok)
    assert [(s.text, s.tokens[-1], s.activation, s.doc, s.position) for s in spans[0]] == [
        (" = x 1", " 1", 3.0, 7, 5), (" a b =", " =", 2.0, 7, 3)]
    assert spans[1] == [] and col.counts_C.tolist() == [2, 0]
    # Window reaching the document start drops the special token.
    col2 = TopSpanCollector(1, k=1, window=5)
    col2.update(feats[..., :1] * 0 + (torch.arange(7) == 2).float()[None, :, None], ids, mask, [0])
    assert col2.spans(tok, tokens_by_doc={0: ids[0].tolist()})[0][0].text == " a b"


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


def test_judge_rules_fills_figures_and_reports_gaps(tmp_path):
    human = tmp_path / "labels.csv"
    human.write_text("p1,p2,q,category,rationale\n1,-1,2,Strict,def\n1,3,2,Plausible,heur\n")
    judge = make_judge(JudgeConfig(backend="replay", replay_path=str(human)))
    explanations = pd.DataFrame({"feature": [1, 2, 3], "explanation": ['Exact pattern: "="', "Semantic: sums", None]})
    rules = pd.DataFrame({"p1": [1, 1, 1, 1], "p2": [-1, 3, -1, 4], "q": [2, 2, 2, 2], "prob": [0.9, 0.5, 0.9, 0.1]})
    out = judge_rules(rules, explanations, judge, progress=False)
    assert list(out.prob) == [0.9, 0.5, 0.9, 0.1]  # order and columns kept
    assert [c if isinstance(c, str) else None for c in out.category] == ["Strict", None, "Strict", None]
    assert list(out.judge_status) == ["ok", "failed", "ok", "failed"]
    assert "feature(s) [3]" in out.judge_error[1] and "feature(s) [4]" in out.judge_error[3]
    assert judge.report.n_items == 1  # the duplicate rule asked once; unexplained ones never


def test_cohen_kappa_hand_computed():
    human = ["Strict", "Strict", "Plausible", "No", "No", "Plausible", "Strict", "No"]
    judge = ["Strict", "Plausible", "Plausible", "No", "Plausible", "Plausible", "Strict", "Strict"]
    # p_o = 5/8; marginals human (3,2,3)/8, judge (3,4,1)/8 -> p_e = (9+8+3)/64 = 20/64
    # kappa = (5/8 - 20/64) / (1 - 20/64) = 20/44 = 5/11
    raw, kappa = cohen_kappa(human, judge)
    assert raw == pytest.approx(5 / 8) and kappa == pytest.approx(5 / 11)
    assert cohen_kappa(["No"] * 3, ["No"] * 3)[0] == 1.0 and math.isnan(cohen_kappa(["No"] * 3, ["No"] * 3)[1])
    assert cohen_kappa(["Strict", "No"], ["No", "Strict"])[1] == pytest.approx(-1.0)


def test_agreement_joins_on_rules(tmp_path):
    human = tmp_path / "human.csv"
    rows = [(1, -1, 2, "Strict"), (1, 3, 2, "Strict"), (2, -1, 3, "Plausible"), (4, -1, 5, "Noise"),
            (5, -1, 6, "No"), (6, -1, 7, "Plausible"), (7, -1, 8, "Strict"), (8, -1, 9, "No"), (9, -1, 1, "No")]
    pd.DataFrame(rows, columns=["p1", "p2", "q", "label"]).to_csv(human, index=False)
    judged_cats = ["Strict", "Plausible", "Plausible", "No", "Plausible", "Plausible", "Strict", "Strict"]
    judged = pd.DataFrame({"p1": [r[0] for r in rows[:8]], "p2": [r[1] for r in rows[:8]],
                           "q": [r[2] for r in rows[:8]], "category": judged_cats,
                           "judge_status": ["ok"] * 8})
    result = agreement(human, judged)
    assert result.n == 8 and result.n_unmatched == 1
    assert result.raw_agreement == pytest.approx(5 / 8) and result.kappa == pytest.approx(5 / 11)
    assert result.confusion.loc["No", "Plausible"] == 1 and int(result.confusion.values.sum()) == 8


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
        InterpretConfig(**{field: value}).validate()
