"""Each feature's top activating spans, collected in one streaming pass over the corpus
(paper Appendix C.2): per feature, how many tokens and documents it fires on and its top-k
activations (doc, position), in O(features x k) memory. The spans are what the judge reads
to explain and verify a feature (sal.feature_explanations)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Callable, Mapping, Optional, Sequence, Union

import torch

from sal import atomic
from sal.judge import Span

MAX_LAYERS = 63
"""Layers an int64 bitmask can name (bit 63 is the sign bit)."""

TokensByDoc = Union[Mapping[int, Sequence[int]], Callable[[int], Sequence[int]]]


def split_at_peak(text: str, token: str) -> tuple[str, bool]:
    """(the span's text before its activating token, whether ``text`` ends in that token's
    decoded piece). A span is a window ending at the activating token; decoding the window
    whole can merge the token with its neighbour, and then the whole window comes back
    (False). Where a reader highlights the peak token, this is where it is cut."""
    if token and text.endswith(token):
        return text[: len(text) - len(token)], True
    return text, False


class TopSpanCollector:
    """Per-feature activation counts (tokens and documents) and top-k activating
    (activation, doc, position, layers fired in).

    update() takes per-token activations per layer, feats_BTLC, and reduces them over the
    crosscoder's layers itself (max over layers: spans are collected "regardless of which
    layer they activate in"); for each kept entry it also records the layers the feature
    fires in at that token, as an int64 bitmask (bit l = the crosscoder's l-th layer, so
    L <= 63). Activations already reduced over the layers, feats_BTC, are accepted too: their
    entries record no layers (mask 0; a kept entry always fired in some layer, so 0 reads
    "not recorded"). A feature fires on a token when that activation exceeds tau on an
    unmasked token. The merge of each batch is a vectorised torch.topk over [C, k + k'] - no
    Python loop over features - so memory stays O(C x k) whatever the corpus size.

    Positions index the rows given to update(); spans() needs each doc's token ids in the
    same indexing (with right padding these are the document's own positions). With
    store_tokens=True the collector keeps every row it sees for that purpose (fine for
    the offline corpus; pass `tokens_by_doc` from the stored corpus otherwise). `layers`
    names the crosscoder's layers (the subject model's layer numbers) for fired_layers().
    """

    def __init__(self, n_features: int, k: int = 30, window: int = 32, tau: float = 0.0, store_tokens: bool = False,
                 layers: Optional[Sequence[int]] = None):
        if n_features < 1 or k < 1 or window < 1:
            raise ValueError(f"TopSpanCollector needs n_features, k, window >= 1, got {n_features}, {k}, {window}")
        if layers is not None and not 1 <= len(layers) <= MAX_LAYERS:
            raise ValueError(f"TopSpanCollector keeps layers as an int64 bitmask: 1 to {MAX_LAYERS} layers, "
                             f"got {len(layers)}")
        self.n_features, self.k, self.window, self.tau = n_features, k, window, float(tau)
        self.layers: Optional[list[int]] = None if layers is None else [int(x) for x in layers]
        self.counts_C = torch.zeros(n_features, dtype=torch.int64)
        """Tokens each feature fires on."""
        self.doc_counts_C = torch.zeros(n_features, dtype=torch.int64)
        """Documents each feature fires in (a document is one row of one update() call)."""
        self.n_docs = 0
        self.top_act_CK = torch.full((n_features, k), -math.inf, dtype=torch.float32)
        self.top_doc_CK = torch.full((n_features, k), -1, dtype=torch.int64)
        self.top_pos_CK = torch.full((n_features, k), -1, dtype=torch.int64)
        self.top_layers_CK = torch.zeros((n_features, k), dtype=torch.int64)
        """Bit l set: the entry's activation exceeds tau at the l-th crosscoder layer (0: not recorded)."""
        self.n_tokens = 0
        self.store_tokens = store_tokens
        self.doc_tokens: dict[int, list[int]] = {}

    @torch.no_grad()
    def update(self, feats: torch.Tensor, token_ids_BT: torch.Tensor, mask_BT: torch.Tensor, doc_ids_B: Any,
               chunk_tokens: Optional[int] = None) -> None:
        """Fold in one batch: feats is feats_BTLC (per layer) or feats_BTC (already reduced
        over the layers, no layers recorded). It may live on any device (the top-k runs there;
        only the [C, k] winners come back to the CPU). Tokens are processed `chunk_tokens` at a
        time (default: ~2^25 activations per chunk), so temporaries stay bounded; any split
        of the tokens gives the same result, because the top-k merge is associative."""
        feats_BTLC = self._per_layer(feats)
        B, T, L, C = feats_BTLC.shape
        if tuple(mask_BT.shape) != (B, T) or tuple(token_ids_BT.shape) != (B, T):
            raise ValueError(f"mask_BT {tuple(mask_BT.shape)} and token_ids_BT {tuple(token_ids_BT.shape)} must be ({B}, {T})")
        doc_B = torch.as_tensor(doc_ids_B, dtype=torch.int64).reshape(-1).cpu()
        if doc_B.numel() != B:
            raise ValueError(f"doc_ids_B has {doc_B.numel()} ids for a batch of {B}")
        N = B * T
        valid_N = mask_BT.to(feats_BTLC.device).bool().reshape(N)
        self.n_tokens += int(valid_N.sum())
        self.n_docs += B
        valid_BT = valid_N.reshape(B, T)
        # The max over layers once per batch: the document counts and every chunk's top-k read
        # it; the per-layer values are read back only for each chunk's winners.
        feats_BTC = feats_BTLC.detach().amax(dim=2)
        for b in range(B):  # one document at a time: a [T, C] mask, never [B, T, C]
            fired_C = (feats_BTC[b][valid_BT[b]] > self.tau).any(dim=0)
            self.doc_counts_C += fired_C.to(device="cpu", dtype=torch.int64)
        feats_NC, feats_NLC = feats_BTC.reshape(N, C), feats_BTLC.detach().reshape(N, L, C)
        step = chunk_tokens or max(1, (1 << 25) // C)
        doc_N = doc_B.repeat_interleave(T)
        pos_N = torch.arange(T).repeat(B)
        for n0 in range(0, N, step):
            self._fold_chunk(feats_NC, feats_NLC if feats.dim() == 4 else None, valid_N, doc_N, pos_N, n0,
                             min(N, n0 + step))
        empty = torch.isinf(self.top_act_CK)
        self.top_doc_CK[empty] = -1
        self.top_pos_CK[empty] = -1
        self.top_layers_CK[empty] = 0

        if self.store_tokens:
            ids_BT = torch.where(valid_N.cpu().reshape(B, T), token_ids_BT.to("cpu").long(), torch.tensor(-1))
            for b in range(B):  # one row per document, not per feature
                self.doc_tokens[int(doc_B[b])] = ids_BT[b].tolist()

    def _per_layer(self, feats: torch.Tensor) -> torch.Tensor:
        """feats as [B, T, L, C], checked against the collector (feats_BTC as one layer)."""
        if feats.dim() not in (3, 4):
            raise ValueError(f"update() takes feats_BTLC or feats_BTC, got shape {tuple(feats.shape)}")
        feats_BTLC = feats if feats.dim() == 4 else feats.unsqueeze(2)
        L, C = feats_BTLC.shape[2:]
        if C != self.n_features:
            raise ValueError(f"feats has {C} features, the collector was built for {self.n_features}")
        if feats.dim() == 4 and L > MAX_LAYERS:
            raise ValueError(f"feats_BTLC has {L} layers; the collector keeps layers as an int64 bitmask "
                             f"(at most {MAX_LAYERS})")
        if feats.dim() == 4 and self.layers is not None and L != len(self.layers):
            raise ValueError(f"feats_BTLC has {L} layers, the collector was built for layers {self.layers}")
        return feats_BTLC

    def _fold_chunk(self, feats_NC: torch.Tensor, feats_NLC: Optional[torch.Tensor], valid_N: torch.Tensor,
                    doc_N: torch.Tensor, pos_N: torch.Tensor, n0: int, n1: int) -> None:
        """Merge tokens n0:n1 into the counts and the top-k (feats_NLC: the per-layer values
        the winners' layers are read from; None: no layers recorded)."""
        # Feature-major copy of a contiguous block of tokens: the count and the top-k
        # then run along contiguous rows (much faster than reducing over dim 0).
        scores_CN = feats_NC[n0:n1].T.float().contiguous()
        scores_CN.masked_fill_(~valid_N[None, n0:n1], -math.inf)
        active_CN = scores_CN > self.tau
        self.counts_C += active_CN.sum(dim=1, dtype=torch.int64).cpu()
        scores_CN.masked_fill_(~active_CN, -math.inf)
        vals_Ck, idx_Ck = scores_CN.topk(min(self.k, n1 - n0), dim=1)  # this block's top-k per feature
        layers_Ck = self._layer_bits(feats_NLC, idx_Ck + n0) if feats_NLC is not None else torch.zeros_like(idx_Ck)
        vals_Ck, idx_Ck, layers_Ck = vals_Ck.cpu(), idx_Ck.cpu() + n0, layers_Ck.cpu()
        self._merge_top(vals_Ck, doc_N[idx_Ck], pos_N[idx_Ck], layers_Ck)

    def _layer_bits(self, feats_NLC: torch.Tensor, idx_Ck: torch.Tensor) -> torch.Tensor:
        """[C, k] bitmask of the layers where feature c exceeds tau at token idx_Ck[c, j]:
        only the winners' [C, k, L] activations are gathered, never a mask per token."""
        C, L = feats_NLC.shape[2], feats_NLC.shape[1]
        c_C1 = torch.arange(C, device=feats_NLC.device)[:, None]
        fired_CkL = feats_NLC[idx_Ck, :, c_C1].float() > self.tau  # advanced indices first: [C, k, L]
        bits_L = torch.ones(L, dtype=torch.int64, device=feats_NLC.device) << torch.arange(L, device=feats_NLC.device)
        return (fired_CkL.to(torch.int64) * bits_L).sum(dim=-1)

    def _merge_top(self, act_Ck: torch.Tensor, doc_Ck: torch.Tensor, pos_Ck: torch.Tensor,
                   layers_Ck: torch.Tensor) -> None:
        """Keep the k strongest of the kept entries and these (all on the CPU)."""
        vals_all = torch.cat([self.top_act_CK, act_Ck], dim=1)
        order = vals_all.topk(self.k, dim=1).indices
        self.top_act_CK = vals_all.gather(1, order)
        self.top_doc_CK = torch.cat([self.top_doc_CK, doc_Ck], dim=1).gather(1, order)
        self.top_pos_CK = torch.cat([self.top_pos_CK, pos_Ck], dim=1).gather(1, order)
        self.top_layers_CK = torch.cat([self.top_layers_CK, layers_Ck], dim=1).gather(1, order)

    def merge(self, other: "TopSpanCollector") -> "TopSpanCollector":
        """Fold in another shard's collector (e.g. another DDP rank's)."""
        if (other.n_features, other.k, other.tau) != (self.n_features, self.k, self.tau):
            raise ValueError("collectors differ in n_features, k or tau; they cannot be merged")
        if None not in (self.layers, other.layers) and self.layers != other.layers:
            raise ValueError(f"collectors name different layers ({self.layers}, {other.layers}); they cannot be merged")
        self.layers = self.layers if self.layers is not None else other.layers
        self.counts_C += other.counts_C
        self.doc_counts_C += other.doc_counts_C
        self.n_tokens += other.n_tokens
        self.n_docs += other.n_docs
        self._merge_top(other.top_act_CK, other.top_doc_CK, other.top_pos_CK, other.top_layers_CK)
        self.doc_tokens.update(other.doc_tokens)
        return self

    def save(self, path: str | Path) -> None:
        from safetensors.torch import save_file

        tensors = {"counts_C": self.counts_C, "doc_counts_C": self.doc_counts_C, "top_act_CK": self.top_act_CK,
                   "top_doc_CK": self.top_doc_CK, "top_pos_CK": self.top_pos_CK, "top_layers_CK": self.top_layers_CK}
        if self.doc_tokens:
            docs = sorted(self.doc_tokens)
            lengths = [len(self.doc_tokens[d]) for d in docs]
            tensors["doc_ids"] = torch.tensor(docs, dtype=torch.int64)
            tensors["doc_lengths"] = torch.tensor(lengths, dtype=torch.int64)
            tensors["doc_tokens"] = torch.tensor([t for d in docs for t in self.doc_tokens[d]], dtype=torch.int64)
        meta = {"n_features": str(self.n_features), "k": str(self.k), "window": str(self.window),
                "tau": repr(self.tau), "n_tokens": str(self.n_tokens), "n_docs": str(self.n_docs),
                "store_tokens": str(self.store_tokens)}
        if self.layers is not None:
            meta["layers"] = json.dumps(self.layers)
        with atomic.atomic_path(path) as tmp:
            save_file(tensors, str(tmp), metadata=meta)

    @classmethod
    def load(cls, path: str | Path) -> "TopSpanCollector":
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata()
            t = {name: f.get_tensor(name) for name in f.keys()}
        self = cls(int(meta["n_features"]), int(meta["k"]), int(meta["window"]), float(meta["tau"]),
                   meta.get("store_tokens") == "True", json.loads(meta["layers"]) if "layers" in meta else None)
        if "doc_counts_C" not in t:
            raise ValueError(f"{path} was saved before collectors counted documents; delete it to recompute.")
        self.counts_C, self.doc_counts_C, self.top_act_CK = t["counts_C"], t["doc_counts_C"], t["top_act_CK"]
        self.n_docs = int(meta["n_docs"])
        self.top_doc_CK, self.top_pos_CK = t["top_doc_CK"], t["top_pos_CK"]
        if "top_layers_CK" in t:  # files saved before layers were recorded keep mask 0: not recorded
            self.top_layers_CK = t["top_layers_CK"]
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

    def fired_layers(self, features: Optional[Sequence[int]] = None,
                     top: Optional[int] = None) -> dict[int, list[Optional[list[int]]]]:
        """Per feature, for each of its top entries (in spans()' order, strongest first), the
        layers it fires in there: the subject model's layer numbers where the collector was
        given `layers`, else the crosscoder's layer positions 0..L-1; None where not recorded
        (activations given already reduced over the layers). Features that never fired map
        to an empty list."""
        top = self.k if top is None else min(top, self.k)
        features = range(self.n_features) if features is None else features
        names = self.layers or list(range(MAX_LAYERS))
        acts, masks = self.top_act_CK.tolist(), self.top_layers_CK.tolist()
        out: dict[int, list[Optional[list[int]]]] = {}
        for f in features:
            f = int(f)
            kept = [m for a, m in zip(acts[f][:top], masks[f][:top]) if not math.isinf(a)]
            out[f] = [[names[l] for l in range(MAX_LAYERS) if m >> l & 1] or None for m in kept]
        return out
