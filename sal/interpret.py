"""Feature interpretation and rule judging (paper Section 2.2, Appendix C.2 and D).

1. `TopSpanCollector`: one streaming pass over the corpus keeps, per feature, how many
   tokens it fires on and its top-k activations (doc, position), in O(features x k) memory.
2. `interpret_features`: explains every sufficiently activated feature (>= 30 activations)
   from its top-15 spans (Figure 7), verifies the summary on its top-30 spans (Figure 8),
   writes features/explanations.parquet and the Table 3 figures, and returns the allowed
   feature set (decision "Maybe" or better) for rule counting.
3. `judge_rules`: soundness category and rationale for each rule (Figures 9/10).
4. `agreement`: raw agreement and Cohen's kappa between human and judge labels.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, NamedTuple, Optional, Sequence, Union

import torch

from sal import atomic

from sal.config.judge import InterpretConfig
from sal.faults import kill_point
from sal.judge import (
    CATEGORIES,
    DECISIONS,
    OK,
    Judge,
    Judgment,
    Span,
    explain_item,
    rule_item,
    verify_item,
)
from sal.judge.parse import normalise_category

log = logging.getLogger(__name__)

EXPLAINABLE = ("Yes", "Probably", "Maybe")  # "Maybe or above" counts as explained (App. C.2)
TokensByDoc = Union[Mapping[int, Sequence[int]], Callable[[int], Sequence[int]]]


# ---------------------------------------------------------------------------------------
# 1. Streaming top-k spans
# ---------------------------------------------------------------------------------------
class TopSpanCollector:
    """Per-feature activation counts (tokens and documents) and top-k activating
    (activation, doc, position).

    update() takes per-token activations already reduced over the crosscoder's layers (max
    over layers: spans are collected "regardless of which layer they activate in"). A
    feature fires on a token when that activation exceeds tau on an unmasked token. The
    merge of each batch is a vectorised torch.topk over [C, k + k'] - no Python loop over
    features - so memory stays O(C x k) whatever the corpus size.

    Positions index the rows given to update(); spans() needs each doc's token ids in the
    same indexing (with right padding these are the document's own positions). With
    store_tokens=True the collector keeps every row it sees for that purpose (fine for
    the offline corpus; pass `tokens_by_doc` from the stored corpus otherwise).
    """

    def __init__(self, n_features: int, k: int = 30, window: int = 32, tau: float = 0.0, store_tokens: bool = False):
        if n_features < 1 or k < 1 or window < 1:
            raise ValueError(f"TopSpanCollector needs n_features, k, window >= 1, got {n_features}, {k}, {window}")
        self.n_features, self.k, self.window, self.tau = n_features, k, window, float(tau)
        self.counts_C = torch.zeros(n_features, dtype=torch.int64)
        """Tokens each feature fires on."""
        self.doc_counts_C = torch.zeros(n_features, dtype=torch.int64)
        """Documents each feature fires in (a document is one row of one update() call)."""
        self.n_docs = 0
        self.top_act_CK = torch.full((n_features, k), -math.inf, dtype=torch.float32)
        self.top_doc_CK = torch.full((n_features, k), -1, dtype=torch.int64)
        self.top_pos_CK = torch.full((n_features, k), -1, dtype=torch.int64)
        self.n_tokens = 0
        self.store_tokens = store_tokens
        self.doc_tokens: dict[int, list[int]] = {}

    @torch.no_grad()
    def update(self, feats_BTC: torch.Tensor, token_ids_BT: torch.Tensor, mask_BT: torch.Tensor, doc_ids_B: Any,
               chunk_tokens: Optional[int] = None) -> None:
        """Fold in one batch. feats_BTC may live on any device (the top-k runs there; only
        the [C, k] winners come back to the CPU). Tokens are processed `chunk_tokens` at a
        time (default: ~2^25 activations per chunk), so temporaries stay bounded; any split
        of the tokens gives the same result, because the top-k merge is associative."""
        B, T, C = feats_BTC.shape
        if C != self.n_features:
            raise ValueError(f"feats_BTC has {C} features, the collector was built for {self.n_features}")
        if tuple(mask_BT.shape) != (B, T) or tuple(token_ids_BT.shape) != (B, T):
            raise ValueError(f"mask_BT {tuple(mask_BT.shape)} and token_ids_BT {tuple(token_ids_BT.shape)} must be ({B}, {T})")
        doc_B = torch.as_tensor(doc_ids_B, dtype=torch.int64).reshape(-1).cpu()
        if doc_B.numel() != B:
            raise ValueError(f"doc_ids_B has {doc_B.numel()} ids for a batch of {B}")
        N = B * T
        valid_N = mask_BT.to(feats_BTC.device).bool().reshape(N)
        self.n_tokens += int(valid_N.sum())
        self.n_docs += B
        valid_BT = valid_N.reshape(B, T)
        for b in range(B):  # one document at a time: a [T, C] mask, never [B, T, C]
            fired_C = (feats_BTC[b][valid_BT[b]] > self.tau).any(dim=0)
            self.doc_counts_C += fired_C.to(device="cpu", dtype=torch.int64)
        feats_NC = feats_BTC.detach().reshape(N, C)
        step = chunk_tokens or max(1, (1 << 25) // C)
        doc_N = doc_B.repeat_interleave(T)
        pos_N = torch.arange(T).repeat(B)
        for n0 in range(0, N, step):
            n1 = min(N, n0 + step)
            # Feature-major copy of a contiguous block of tokens: the count and the top-k
            # then run along contiguous rows (much faster than reducing over dim 0).
            scores_CN = feats_NC[n0:n1].T.float().contiguous()
            scores_CN.masked_fill_(~valid_N[None, n0:n1], -math.inf)
            active_CN = scores_CN > self.tau
            self.counts_C += active_CN.sum(dim=1, dtype=torch.int64).cpu()
            scores_CN.masked_fill_(~active_CN, -math.inf)
            vals_Ck, idx_Ck = scores_CN.topk(min(self.k, n1 - n0), dim=1)  # this block's top-k per feature
            vals_Ck, idx_Ck = vals_Ck.cpu(), idx_Ck.cpu() + n0
            vals_all = torch.cat([self.top_act_CK, vals_Ck], dim=1)
            order = vals_all.topk(self.k, dim=1).indices
            self.top_act_CK = vals_all.gather(1, order)
            self.top_doc_CK = torch.cat([self.top_doc_CK, doc_N[idx_Ck]], dim=1).gather(1, order)
            self.top_pos_CK = torch.cat([self.top_pos_CK, pos_N[idx_Ck]], dim=1).gather(1, order)
        empty = torch.isinf(self.top_act_CK)
        self.top_doc_CK[empty] = -1
        self.top_pos_CK[empty] = -1

        if self.store_tokens:
            ids_BT = torch.where(valid_N.cpu().reshape(B, T), token_ids_BT.to("cpu").long(), torch.tensor(-1))
            for b in range(B):  # one row per document, not per feature
                self.doc_tokens[int(doc_B[b])] = ids_BT[b].tolist()

    def merge(self, other: "TopSpanCollector") -> "TopSpanCollector":
        """Fold in another shard's collector (e.g. another DDP rank's)."""
        if (other.n_features, other.k, other.tau) != (self.n_features, self.k, self.tau):
            raise ValueError("collectors differ in n_features, k or tau; they cannot be merged")
        self.counts_C += other.counts_C
        self.doc_counts_C += other.doc_counts_C
        self.n_tokens += other.n_tokens
        self.n_docs += other.n_docs
        vals_all = torch.cat([self.top_act_CK, other.top_act_CK], dim=1)
        order = vals_all.topk(self.k, dim=1).indices
        self.top_act_CK = vals_all.gather(1, order)
        self.top_doc_CK = torch.cat([self.top_doc_CK, other.top_doc_CK], dim=1).gather(1, order)
        self.top_pos_CK = torch.cat([self.top_pos_CK, other.top_pos_CK], dim=1).gather(1, order)
        self.doc_tokens.update(other.doc_tokens)
        return self

    def save(self, path: str | Path) -> None:
        from safetensors.torch import save_file

        tensors = {"counts_C": self.counts_C, "doc_counts_C": self.doc_counts_C, "top_act_CK": self.top_act_CK,
                   "top_doc_CK": self.top_doc_CK, "top_pos_CK": self.top_pos_CK}
        if self.doc_tokens:
            docs = sorted(self.doc_tokens)
            lengths = [len(self.doc_tokens[d]) for d in docs]
            tensors["doc_ids"] = torch.tensor(docs, dtype=torch.int64)
            tensors["doc_lengths"] = torch.tensor(lengths, dtype=torch.int64)
            tensors["doc_tokens"] = torch.tensor([t for d in docs for t in self.doc_tokens[d]], dtype=torch.int64)
        meta = {"n_features": str(self.n_features), "k": str(self.k), "window": str(self.window),
                "tau": repr(self.tau), "n_tokens": str(self.n_tokens), "n_docs": str(self.n_docs),
                "store_tokens": str(self.store_tokens)}
        with atomic.atomic_path(path) as tmp:
            save_file(tensors, str(tmp), metadata=meta)

    @classmethod
    def load(cls, path: str | Path) -> "TopSpanCollector":
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata()
            t = {name: f.get_tensor(name) for name in f.keys()}
        self = cls(int(meta["n_features"]), int(meta["k"]), int(meta["window"]), float(meta["tau"]),
                   meta.get("store_tokens") == "True")
        if "doc_counts_C" not in t:
            raise ValueError(f"{path} was saved before collectors counted documents; delete it to recompute.")
        self.counts_C, self.doc_counts_C, self.top_act_CK = t["counts_C"], t["doc_counts_C"], t["top_act_CK"]
        self.n_docs = int(meta["n_docs"])
        self.top_doc_CK, self.top_pos_CK = t["top_doc_CK"], t["top_pos_CK"]
        self.n_tokens = int(meta["n_tokens"])
        if "doc_ids" in t:
            flat = t["doc_tokens"].tolist()
            start = 0
            for d, n in zip(t["doc_ids"].tolist(), t["doc_lengths"].tolist()):
                self.doc_tokens[d] = flat[start:start + n]
                start += n
        return self

    def spans(
        self,
        tokenizer: Any,
        tokens_by_doc: Optional[TokensByDoc] = None,
        features: Optional[Sequence[int]] = None,
        top: Optional[int] = None,
    ) -> dict[int, list[Span]]:
        """Each feature's top spans, strongest first: windows of `window` tokens ending at
        the activating token, masked and special tokens dropped. Features that never fired
        map to an empty list."""
        if tokens_by_doc is None:
            if not self.doc_tokens:
                raise ValueError("spans() needs tokens_by_doc (doc id -> token ids) unless the collector "
                                 "was built with store_tokens=True")
            tokens_by_doc = self.doc_tokens
        lookup = tokens_by_doc.__getitem__ if isinstance(tokens_by_doc, Mapping) else tokens_by_doc
        special = set(getattr(tokenizer, "all_special_ids", []) or [])
        piece_cache: dict[int, str] = {}

        def piece(i: int) -> str:
            if i not in piece_cache:
                piece_cache[i] = tokenizer.decode([i])
            return piece_cache[i]

        top = self.k if top is None else min(top, self.k)
        features = range(self.n_features) if features is None else features
        acts, docs, poss = self.top_act_CK.tolist(), self.top_doc_CK.tolist(), self.top_pos_CK.tolist()
        out: dict[int, list[Span]] = {}
        for f in features:
            f = int(f)
            spans: list[Span] = []
            for act, doc, pos in zip(acts[f][:top], docs[f][:top], poss[f][:top]):
                if math.isinf(act):
                    break
                ids = list(lookup(doc))
                if pos >= len(ids):
                    raise ValueError(f"feature {f}: position {pos} beyond the {len(ids)} tokens given for doc {doc}")
                window = [i for i in ids[max(0, pos - self.window + 1): pos + 1] if i >= 0]
                last = window[-1:]  # the activating token stays even if special
                window = [i for i in window[:-1] if i not in special] + last
                spans.append(Span(tokenizer.decode(window), tuple(piece(i) for i in window), float(act), doc, pos))
            out[f] = spans
        return out


# ---------------------------------------------------------------------------------------
# 2. Explain and verify
# ---------------------------------------------------------------------------------------
class InterpretResult(NamedTuple):
    explanations: Any
    """pandas DataFrame, one row per feature (see interpret_features)."""
    table3: dict
    """Dead rate, explainable rate and decision shares (paper Table 3)."""
    allowed: list[int]
    """Features verified "Maybe" or better: the features rule counting may use."""
    problems: list[tuple[str, str, Optional[str]]]
    """(item key, status, error) of every explain/verify question left unanswered."""


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
    import pandas as pd

    config = (config or InterpretConfig()).validate()
    if collector.k < config.top_k:
        raise ValueError(f"the collector keeps {collector.k} spans per feature but interpret.top_k={config.top_k}")
    verifier = verifier or judge
    counts = collector.counts_C.tolist()
    doc_counts = collector.doc_counts_C.tolist()
    by_unit = doc_counts if config.activation_unit == "documents" else counts
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

    rows = []
    problems: list[tuple[str, str, Optional[str]]] = []
    for f, n in enumerate(counts):
        enough = by_unit[f] >= config.min_activations
        row = {"feature": f, "n_activations": int(n), "n_documents": int(doc_counts[f]), "sufficient": enough,
               "summary_kind": None, "explanation": None, "decision": None, "explainable": False,
               "status": "dead" if n == 0 else ("rare" if not enough else None), "error": None}
        if f in summaries:
            s = summaries[f]
            answer = decisions.get(f)
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
    frame = pd.DataFrame(rows)

    n_features = len(counts)
    judged = frame[frame.sufficient & (frame.status == OK)]
    shares = {d: float((judged.decision == d).sum()) / len(judged) if len(judged) else math.nan for d in DECISIONS}
    shares["Cannot Tell"] = float((judged.summary_kind == "cannot_tell").sum()) / len(judged) if len(judged) else math.nan
    table3 = {
        "n_features": n_features,
        "n_tokens": collector.n_tokens,
        "n_documents": collector.n_docs,
        "activation_unit": config.activation_unit,
        "n_dead": int(sum(n == 0 for n in counts)),
        "dead_rate": sum(n == 0 for n in counts) / n_features,
        "min_activations": config.min_activations,
        "n_sufficient": len(sufficient),
        "n_judged": int(len(judged)),
        "n_unanswered": len(sufficient) - int(len(judged)),
        "explainable_rate": float(judged.explainable.mean()) if len(judged) else math.nan,
        "decision_shares": shares,
        "judge": judge.report.model,
        "verifier": verifier.report.model,
        "judge_report": {k: v for k, v in judge.report.to_dict().items() if k != "problems"},
    }
    allowed = [int(f) for f in frame.feature[frame.explainable]]

    out = Path(out_dir) / "features"
    out.mkdir(parents=True, exist_ok=True)
    span_rows = [{"feature": f, "rank": r, "activation": s.activation, "doc": s.doc, "position": s.position,
                  "text": s.text, "token": s.tokens[-1] if s.tokens else ""}
                 for f in sufficient for r, s in enumerate(spans[f])]
    atomic.write_parquet(pd.DataFrame(span_rows, columns=["feature", "rank", "activation", "doc", "position", "text",
                                                          "token"]), out / "top_spans.parquet")
    atomic.write_json(out / "table3.json", table3)
    # Last: the extract stage takes explanations.parquet for "features done".
    atomic.write_parquet(frame, out / "explanations.parquet")
    if problems:
        log.warning("%d of %d sufficiently activated features were not fully judged; see %s (status column)",
                    len(set(k.split("/", 1)[1] for k, _, _ in problems)), len(sufficient), out / "explanations.parquet")
    log.info("features: dead rate %.2f%%, explainable rate %.2f%% of %d judged, %d allowed",
             100 * table3["dead_rate"], 100 * (table3["explainable_rate"] if len(judged) else 0), len(judged), len(allowed))
    return InterpretResult(frame, table3, allowed, problems)


# ---------------------------------------------------------------------------------------
# 3. Rule judging
# ---------------------------------------------------------------------------------------
def _explanation_map(explanations: Any) -> dict[int, str]:
    if isinstance(explanations, (str, Path)):
        import pandas as pd

        explanations = pd.read_parquet(explanations)
    if isinstance(explanations, Mapping):
        return {int(k): v for k, v in explanations.items() if isinstance(v, str) and v.strip()}
    frame = explanations
    return {int(f): e for f, e in zip(frame["feature"], frame["explanation"]) if isinstance(e, str) and e.strip()}


def judge_rules(rules_df: Any, explanations: Any, judge: Judge, progress: bool = True) -> Any:
    """Soundness of each rule: a copy of `rules_df` (columns p1, p2, q; p2 == -1 for a
    one-premise rule) with `category` ("Strict"/"Plausible"/"No", null when not labelled),
    `rationale`, `judge_status` and `judge_error` added, in the same row order.

    explanations: the explanations DataFrame (feature, explanation), its parquet path, or a
    {feature: explanation} mapping. A rule naming a feature without an explanation is not
    sent to the judge and is reported with judge_status "failed"."""
    explained = _explanation_map(explanations)
    out = rules_df.copy()
    keys_rows: dict[tuple[int, int, int], Optional[Any]] = {}
    missing: dict[tuple[int, int, int], str] = {}
    items = []
    for p1, p2, q in zip(out["p1"].astype(int), out["p2"].astype(int), out["q"].astype(int)):
        rule = (int(p1), int(p2), int(q))
        if rule in keys_rows or rule in missing:
            continue
        feats = [rule[0], rule[2]] + ([rule[1]] if rule[1] >= 0 else [])
        lacking = [f for f in feats if f not in explained]
        if lacking:
            missing[rule] = f"no explanation for feature(s) {lacking}; only explained features can be judged"
            continue
        premises = [explained[rule[0]]] + ([explained[rule[1]]] if rule[1] >= 0 else [])
        items.append(rule_item(rule[0], rule[1], rule[2], premises, explained[rule[2]]))
        keys_rows[rule] = None
    kill_point("judge_rules.start")
    judgments = judge.judge(items, progress=progress, desc="judge rules")
    kill_point("judge_rules.done")
    by_rule = dict(zip(list(keys_rows), judgments))

    categories, rationales, statuses, errors = [], [], [], []
    for p1, p2, q in zip(out["p1"].astype(int), out["p2"].astype(int), out["q"].astype(int)):
        rule = (int(p1), int(p2), int(q))
        j: Optional[Judgment] = by_rule.get(rule)
        if j is None:
            categories.append(None); rationales.append(None); statuses.append("failed"); errors.append(missing[rule])
        else:
            categories.append(j.label if j.ok else None)
            rationales.append(j.text if j.ok else None)
            statuses.append(j.status)
            errors.append(j.error)
    out["category"], out["rationale"], out["judge_status"], out["judge_error"] = categories, rationales, statuses, errors
    n_bad = sum(s != OK for s in statuses)
    if n_bad:
        log.warning("%d of %d rules have no soundness label (judge_status != ok)", n_bad, len(statuses))
    return out


# ---------------------------------------------------------------------------------------
# 4. Agreement with human labels
# ---------------------------------------------------------------------------------------
@dataclass
class Agreement:
    n: int
    """Rules labelled by both the human and the judge."""
    raw_agreement: float
    kappa: float
    """Cohen's kappa; NaN when chance agreement is 1 (both raters used one same label)."""
    confusion: Any
    """DataFrame: rows human category, columns judge category, counts."""
    n_unmatched: int
    """Human-labelled rules the judge did not label (absent or not ok), left out."""


def cohen_kappa(a: Sequence[str], b: Sequence[str], labels: Sequence[str] = CATEGORIES) -> tuple[float, float]:
    """(raw agreement, Cohen's kappa) of two equally long label sequences:
    kappa = (p_o - p_e) / (1 - p_e), p_e = sum_c p_a(c) p_b(c)."""
    if len(a) != len(b):
        raise ValueError(f"label sequences differ in length: {len(a)} vs {len(b)}")
    n = len(a)
    if n == 0:
        return math.nan, math.nan
    p_o = sum(x == y for x, y in zip(a, b)) / n
    p_e = sum((sum(x == c for x in a) / n) * (sum(y == c for y in b) / n) for c in labels)
    kappa = (p_o - p_e) / (1 - p_e) if p_e < 1 else math.nan
    return p_o, kappa


def agreement(human_csv: Any, judged: Any) -> Agreement:
    """Agreement between human soundness labels and the judge's.

    human_csv: CSV path or DataFrame with p1, q, optionally p2 (missing/-1 = one premise)
    and the human label in `category`, `label` or `human` (Strict/Plausible/No; Noise = No).
    judged: judge_rules' output (p1, p2, q, category[, judge_status])."""
    import pandas as pd

    human = pd.read_csv(human_csv) if isinstance(human_csv, (str, Path)) else human_csv.copy()
    label_col = next((c for c in ("category", "label", "human") if c in human.columns), None)
    if label_col is None or "p1" not in human.columns or "q" not in human.columns:
        raise ValueError(f"human labels need columns p1, q (p2 optional) and category/label/human; got {list(human.columns)}")
    if "p2" not in human.columns:
        human["p2"] = -1
    human["p2"] = human["p2"].fillna(-1)
    h_labels = {}
    for i, (p1, p2, q, lab) in enumerate(zip(human.p1, human.p2, human.q, human[label_col])):
        cat = normalise_category(lab)
        if cat is None:
            raise ValueError(f"human label {lab!r} in row {i} is not Strict/Plausible/No (or Noise)")
        h_labels[(int(p1), int(p2), int(q))] = cat
    j_labels = {}
    ok = judged["judge_status"] == OK if "judge_status" in judged.columns else judged["category"].notna()
    for p1, p2, q, cat, good in zip(judged.p1, judged.p2, judged.q, judged.category, ok):
        if good and normalise_category(cat) is not None:
            j_labels[(int(p1), int(p2), int(q))] = normalise_category(cat)
    common = [r for r in h_labels if r in j_labels]
    a = [h_labels[r] for r in common]
    b = [j_labels[r] for r in common]
    raw, kappa = cohen_kappa(a, b)
    confusion = pd.DataFrame(0, index=pd.Index(CATEGORIES, name="human"), columns=pd.Index(CATEGORIES, name="judge"))
    for x, y in zip(a, b):
        confusion.loc[x, y] += 1
    return Agreement(len(common), raw, kappa, confusion, len(h_labels) - len(common))
