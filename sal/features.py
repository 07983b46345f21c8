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
) -> Iterator[FeatureBatch]:
    """Yield crosscoder features for ``texts`` in batches of ``batch_docs`` documents."""
    device = next(crosscoder.parameters()).device
    special = special_token_ids(tokenizer)
    tokenizer.padding_side = "right"
    for start in tqdm(range(0, len(texts), batch_docs), desc=desc, unit="batch",
                      total=(len(texts) + batch_docs - 1) // batch_docs):
        chunk = list(texts[start:start + batch_docs])
        enc = tokenizer(chunk, return_tensors="pt", padding=True, truncation=True, max_length=max_seq_len)
        ids = enc["input_ids"].to(model.device)
        attn = enc["attention_mask"].to(model.device)
        acts_BTLD = residual_stream(model, ids, attn, layers)
        mask_BT = valid_token_mask(ids, attn, special)
        B, T, L, D = acts_BTLD.shape
        with torch.no_grad():
            acts_NLD = acts_BTLD[mask_BT].to(device=device, dtype=crosscoder.W_enc.dtype)
            feats_NLC = crosscoder.features(acts_NLD)
        feats_BTLC = feats_NLC.new_zeros(B, T, L, feats_NLC.shape[-1])
        feats_BTLC[mask_BT.to(device)] = feats_NLC
        yield FeatureBatch(torch.arange(start, start + len(chunk)), ids.cpu(), mask_BT.cpu(), feats_BTLC)
