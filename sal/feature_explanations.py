"""Explain and verify features (paper Section 2.2, Appendix C.2, Figures 7 and 8).

`interpret_features` explains every sufficiently activated feature (>= 30 activations) from
its top-15 spans (sal.top_spans), verifies the summary on its top-30 spans, writes
features/explanations.parquet and the Table 3 figures, and returns the allowed feature set
(decision "Maybe" or better) for rule counting.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any, NamedTuple, Optional

from sal import atomic
from sal.config.judge import InterpretConfig
from sal.faults import kill_point
from sal.judge import DECISIONS, OK, Judge, Judgment, Span, explain_item, verify_item
from sal.top_spans import TokensByDoc, TopSpanCollector

log = logging.getLogger(__name__)

EXPLAINABLE = ("Yes", "Probably", "Maybe")  # "Maybe or above" counts as explained (App. C.2)
Problem = tuple[str, str, Optional[str]]


class InterpretResult(NamedTuple):
    explanations: Any
    """pandas DataFrame, one row per feature (see interpret_features)."""
    table3: dict
    """Dead rate, explainable rate and decision shares (paper Table 3)."""
    allowed: list[int]
    """Features verified "Maybe" or better: the features rule counting may use."""
    problems: list[Problem]
    """(item key, status, error) of every explain/verify question left unanswered."""


class _Answers(NamedTuple):
    """What the judge said about the sufficiently activated features."""

    sufficient: list[int]
    spans: dict[int, list[Span]]
    summaries: dict[int, Judgment]
    decisions: dict[int, Judgment]


def interpret_features(
    collector: TopSpanCollector,
    judge: Judge,
    tokenizer: Any,
    out_dir: str | Path,
    config: Optional[InterpretConfig] = None,
    tokens_by_doc: Optional[TokensByDoc] = None,
    verifier: Optional[Judge] = None,
    progress: bool = True,
) -> InterpretResult:
    """Explain (Figure 7, top `explain_top` spans) and verify (Figure 8, top `top_k` spans)
    every feature that fires in >= `min_activations` documents (or tokens, under
    activation_unit=tokens); write
    <out_dir>/features/explanations.parquet (feature, n_activations (tokens), n_documents, sufficient,
    summary_kind, explanation, decision, explainable, status, error),
    <out_dir>/features/top_spans.parquet and <out_dir>/features/table3.json.

    A "Cannot Tell" summary is not verified: the feature is judged unexplainable (decision
    null). A feature whose explanation or verification failed or was unparseable is
    excluded from the explainable-rate denominator and counted in table3["n_unanswered"].
    """
    config = config or InterpretConfig()
    if collector.k < config.top_k:
        raise ValueError(f"the collector keeps {collector.k} spans per feature but interpret.top_k={config.top_k}")
    verifier = verifier or judge
    counts = collector.counts_C.tolist()
    by_unit = collector.doc_counts_C.tolist() if config.activation_unit == "documents" else counts
    answers = _explain_and_verify(collector, judge, verifier, tokenizer, tokens_by_doc, config, by_unit, progress)
    frame, problems = _feature_frame(collector, by_unit, config, answers)
    judged = frame[frame.sufficient & (frame.status == OK)]
    table3 = _table3(collector, config, judged, len(answers.sufficient), judge, verifier)
    allowed = [int(f) for f in frame.feature[frame.explainable]]
    fired = collector.fired_layers(answers.sufficient, top=config.top_k)
    out = _write_outputs(Path(out_dir) / "features", frame, answers, fired, table3)
    if problems:
        log.warning("%d of %d sufficiently activated features were not fully judged; see %s (status column)",
                    len(set(k.split("/", 1)[1] for k, _, _ in problems)), len(answers.sufficient),
                    out / "explanations.parquet")
    log.info("features: dead rate %.2f%%, explainable rate %.2f%% of %d judged, %d allowed",
             100 * table3["dead_rate"], 100 * (table3["explainable_rate"] if len(judged) else 0), len(judged), len(allowed))
    return InterpretResult(frame, table3, allowed, problems)


def _explain_and_verify(collector: TopSpanCollector, judge: Judge, verifier: Judge, tokenizer: Any,
                        tokens_by_doc: Optional[TokensByDoc], config: InterpretConfig, by_unit: list[int],
                        progress: bool) -> _Answers:
    """Explain every sufficiently activated feature, then verify the summaries that are not
    "Cannot Tell" (an explanation that admits it has none has nothing to verify)."""
    sufficient = [f for f, n in enumerate(by_unit) if n >= config.min_activations]
    spans = collector.spans(tokenizer, tokens_by_doc, features=sufficient, top=config.top_k)
    explained = judge.judge([explain_item(f, spans[f][: config.explain_top]) for f in sufficient],
                            progress=progress, desc="explain features")
    summaries = {f: j for f, j in zip(sufficient, explained)}
    kill_point("interpret.explained")
    to_verify = [f for f in sufficient if summaries[f].ok and summaries[f].label != "cannot_tell"]
    verified = verifier.judge([verify_item(f, summaries[f].text, spans[f][: config.top_k]) for f in to_verify],
                              progress=progress, desc="verify features")
    decisions = {f: j for f, j in zip(to_verify, verified)}
    kill_point("interpret.judged")
    return _Answers(sufficient, spans, summaries, decisions)


def _feature_frame(collector: TopSpanCollector, by_unit: list[int], config: InterpretConfig,
                   answers: _Answers) -> tuple[Any, list[Problem]]:
    """explanations.parquet's rows, one per feature, and the questions left unanswered."""
    import pandas as pd

    doc_counts = collector.doc_counts_C.tolist()
    rows = []
    problems: list[Problem] = []
    for f, n in enumerate(collector.counts_C.tolist()):
        enough = by_unit[f] >= config.min_activations
        row = {"feature": f, "n_activations": int(n), "n_documents": int(doc_counts[f]), "sufficient": enough,
               "summary_kind": None, "explanation": None, "decision": None, "explainable": False,
               "status": "dead" if n == 0 else ("rare" if not enough else None), "error": None}
        if f in answers.summaries:
            s = answers.summaries[f]
            answer = answers.decisions.get(f)
            failed = s if not s.ok else (answer if answer is not None and not answer.ok else None)
            if failed is not None:
                row.update(status=failed.status, error=failed.error)
                problems.append((failed.key, failed.status, failed.error))
            else:
                row["status"] = OK
            if s.ok:
                row.update(summary_kind=s.label, explanation=s.text)
            if answer is not None and answer.ok:
                row.update(decision=answer.label, explainable=answer.label in EXPLAINABLE)
        rows.append(row)
    return pd.DataFrame(rows), problems


def _table3(collector: TopSpanCollector, config: InterpretConfig, judged: Any, n_sufficient: int, judge: Judge,
            verifier: Judge) -> dict:
    """Table 3's figures over the fully judged features (``judged``)."""
    counts = collector.counts_C.tolist()
    n_features = len(counts)
    shares = {d: float((judged.decision == d).sum()) / len(judged) if len(judged) else math.nan for d in DECISIONS}
    shares["Cannot Tell"] = float((judged.summary_kind == "cannot_tell").sum()) / len(judged) if len(judged) else math.nan
    return {
        "n_features": n_features,
        "n_tokens": collector.n_tokens,
        "n_documents": collector.n_docs,
        "activation_unit": config.activation_unit,
        "n_dead": int(sum(n == 0 for n in counts)),
        "dead_rate": sum(n == 0 for n in counts) / n_features,
        "min_activations": config.min_activations,
        "n_sufficient": n_sufficient,
        "n_judged": int(len(judged)),
        "n_unanswered": n_sufficient - int(len(judged)),
        "explainable_rate": float(judged.explainable.mean()) if len(judged) else math.nan,
        "decision_shares": shares,
        "judge": judge.tally.model,
        "verifier": verifier.tally.model,
        "judge_report": {k: v for k, v in judge.tally.to_dict().items() if k != "problems"},
    }


def _write_outputs(out: Path, frame: Any, answers: _Answers, fired: dict[int, list], table3: dict) -> Path:
    """top_spans.parquet, table3.json, then explanations.parquet; returns their directory.
    A span's `layers` are the layers where the feature fired on its activating token
    (TopSpanCollector.fired_layers: the subject model's layer numbers where the collector
    knows them, else crosscoder positions 0..L-1; null where it was given activations
    already reduced over the layers)."""
    import pandas as pd

    out.mkdir(parents=True, exist_ok=True)
    span_rows = [{"feature": f, "rank": r, "activation": s.activation, "doc": s.doc, "position": s.position,
                  "text": s.text, "token": s.tokens[-1] if s.tokens else "", "layers": fired[f][r]}
                 for f in answers.sufficient for r, s in enumerate(answers.spans[f])]
    atomic.write_parquet(pd.DataFrame(span_rows, columns=["feature", "rank", "activation", "doc", "position", "text",
                                                          "token", "layers"]), out / "top_spans.parquet")
    atomic.write_json(out / "table3.json", table3)
    # Last: the extract stage takes explanations.parquet for "features done".
    atomic.write_parquet(frame, out / "explanations.parquet")
    return out
