"""The feature pass: subject model -> residual stream -> crosscoder features, per document.

Shared by feature interpretation (top activating spans over the corpus) and rule counting
(one layer-count vector per rule-set sample). Only valid positions (not padding, not
special tokens, not the attention-sink first position) carry features; the rest are zero.
"""

from __future__ import annotations

from typing import Iterator, NamedTuple, Sequence

import torch
from tqdm.auto import tqdm

from sal.activations import residual_stream, special_token_ids, valid_token_mask
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
    special = special_token_ids(tokenizer)
    tokenizer.padding_side = "right"
    for start in tqdm(range(0, len(texts), batch_docs), desc=desc, unit="batch",
                      total=(len(texts) + batch_docs - 1) // batch_docs):
        chunk = list(texts[start:start + batch_docs])
        enc = tokenizer(chunk, return_tensors="pt", padding=True, truncation=True, max_length=max_seq_len)
        ids = enc["input_ids"].to(model.device)
        attn = enc["attention_mask"].to(model.device)
        mask_BT = valid_token_mask(ids, attn, special)
        B, T = ids.shape
        acts_NLD = _cached_rows(cached, start, mask_BT.cpu()) if cached is not None else None
        if acts_NLD is None:
            acts_NLD = residual_stream(model, ids, attn, layers)[mask_BT]
        with torch.no_grad():
            feats_NLC = crosscoder.features(acts_NLD.to(device=device, dtype=crosscoder.W_enc.dtype))
        L = feats_NLC.shape[1]
        feats_BTLC = feats_NLC.new_zeros(B, T, L, feats_NLC.shape[-1])
        feats_BTLC[mask_BT.to(device)] = feats_NLC
        yield FeatureBatch(torch.arange(start, start + len(chunk)), ids.cpu(), mask_BT.cpu(), feats_BTLC)
        kill_point("features.batch", desc)


def _cached_rows(cached: dict, first_doc: int, mask_BT: torch.Tensor) -> torch.Tensor | None:
    """The cached activations of a batch's valid positions, in mask order; None when any is
    missing (e.g. the cache truncated the document shorter)."""
    parts = []
    for b in range(mask_BT.shape[0]):
        want = mask_BT[b].nonzero().squeeze(1)
        if want.numel() == 0:
            continue
        positions, acts = cached.get(first_doc + b, (None, None))
        if positions is None:
            return None
        idx = torch.searchsorted(positions, want)
        if bool((idx >= positions.numel()).any()) or not torch.equal(positions[idx.clamp_max(positions.numel() - 1)], want):
            return None
        parts.append(acts[idx])
    return torch.cat(parts) if parts else None
