"""The feature pass: subject model -> residual stream -> crosscoder features, per document.

Shared by feature interpretation (top activating spans over the corpus) and rule counting
(one layer-count vector per rule-set sample). Only valid positions (not padding, not
special tokens, not the attention-sink first position) carry features; the rest are zero.
"""

from __future__ import annotations

from typing import Iterator, NamedTuple, Sequence

import torch
from tqdm.auto import tqdm

from sal.activations import forward_batches, valid_activations
from sal.faults import kill_point


class FeatureBatch(NamedTuple):
    doc_ids: torch.Tensor
    """[B] index of each document in the input list."""
    token_ids_BT: torch.Tensor
    """[B, T] token ids (right-padded)."""
    mask_BT: torch.Tensor
    """[B, T] positions that carry features."""
    feats_BTLC: torch.Tensor
    """[B, T, L, C] crosscoder feature activations (normalised units), zero where ~mask."""


def feature_pass(
    model,
    tokenizer,
    crosscoder,
    texts: Sequence[str],
    layers: Sequence[int],
    max_seq_len: int,
    batch_docs: int = 8,
    desc: str = "feature pass",
    cached: dict | None = None,
) -> Iterator[FeatureBatch]:
    """Yield crosscoder features for ``texts`` in batches of ``batch_docs`` documents.

    ``cached`` (from sal.training.cache.cached_token_activations): the residual stream of
    these documents by (document, position), saved while training; a batch whose valid
    positions it all holds skips the subject model."""
    device = next(crosscoder.parameters()).device
    # In document order (sort_window=None): consumers read the results by document.
    batches = forward_batches(tokenizer, texts, max_seq_len, batch_docs)
    for batch in tqdm(batches, desc=desc, unit="batch", total=-(-len(texts) // batch_docs)):
        mask_BT = batch.valid_BT
        B, T = mask_BT.shape
        acts_NLD = _cached_rows(cached, batch.docs_B, mask_BT) if cached is not None else None
        if acts_NLD is None:
            acts_NLD = valid_activations(model, batch, layers)
        with torch.no_grad():
            feats_NLC = crosscoder.features(acts_NLD.to(device=device, dtype=crosscoder.W_enc.dtype))
        L = feats_NLC.shape[1]
        feats_BTLC = feats_NLC.new_zeros(B, T, L, feats_NLC.shape[-1])
        feats_BTLC[mask_BT.to(device)] = feats_NLC
        yield FeatureBatch(batch.docs_B, batch.ids_BT, mask_BT, feats_BTLC)
        kill_point("features.batch", desc)


def _cached_rows(cached: dict, docs_B: torch.Tensor, mask_BT: torch.Tensor) -> torch.Tensor | None:
    """The cached activations of a batch's valid positions, in mask order; None when any is
    missing (e.g. the cache truncated the document shorter)."""
    parts = []
    for b, doc in enumerate(docs_B.tolist()):
        want = mask_BT[b].nonzero().squeeze(1)
        if want.numel() == 0:
            continue
        positions, acts = cached.get(doc, (None, None))
        if positions is None:
            return None
        idx = torch.searchsorted(positions, want)
        if bool((idx >= positions.numel()).any()) or not torch.equal(positions[idx.clamp_max(positions.numel() - 1)], want):
            return None
        parts.append(acts[idx])
    return torch.cat(parts) if parts else None
