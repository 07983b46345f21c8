"""Batched temperature + nucleus (top-p) sampling for the corpus responses, on CPU or GPU,
with the same distribution as transformers' `generate(do_sample=True, temperature=...,
top_p=...)` at a fraction of its cost on a CPU.

Where `generate` spends a CPU's time on a 135M model, and what is done instead:
- Nucleus filtering sorts the whole vocabulary for every row at every step, and sampling
  draws an exponential for every vocabulary entry. Here the nucleus is read off the top
  `NUCLEUS_CANDIDATES` tokens (a partial selection), which hold it unless the distribution
  is flat; rows where they do not are sorted in full. Only the nucleus is sampled from.
- Every prompt starts with the template's instructions. The shared head runs once and its
  KV cache is shared by all rows; only the tails (the questions) are prefilled per row,
  left-padded so that every row's last prompt token is at the same position.
- Only the last position's logits are computed.
Greedy decoding (temperature 0) gives `generate(do_sample=False)`'s tokens; the tests check
both that and the nucleus against transformers' `TopPLogitsWarper`.
"""

from __future__ import annotations

import inspect
from typing import Sequence

import torch
from torch import Tensor

NUCLEUS_CANDIDATES = 256
"""Tokens selected before the nucleus is computed; a flatter distribution triggers a full sort."""


def nucleus(logits_BV: Tensor, top_p: float) -> tuple[Tensor, Tensor]:
    """The top-p nucleus of each row as (probs_BK, token_ids_BK): the smallest set of most
    probable tokens whose mass reaches `top_p` (at least one), renormalised; entries past a
    row's nucleus have probability 0. Same set as transformers' TopPLogitsWarper."""
    probs_BV = logits_BV.float().softmax(-1)
    k = min(NUCLEUS_CANDIDATES, probs_BV.shape[-1])
    top_BK, ids_BK = probs_BV.topk(k, dim=-1)  # descending
    if k < probs_BV.shape[-1]:
        flat_B = top_BK.sum(-1) < top_p  # the nucleus reaches past the candidates
        if bool(flat_B.any()):
            rows = flat_B.nonzero().squeeze(1)
            full_BV, full_ids_BV = probs_BV[rows].sort(dim=-1, descending=True)
            width = max(k, int(((full_BV.cumsum(-1) - full_BV) < top_p).sum(-1).max()))
            pad = width - k
            top_BK = torch.nn.functional.pad(top_BK, (0, pad))
            ids_BK = torch.nn.functional.pad(ids_BK, (0, pad))
            top_BK[rows], ids_BK[rows] = full_BV[:, :width], full_ids_BV[:, :width]
    # A token stays when the mass strictly before it (descending) is below top_p: the same
    # as keeping ascending cumulative mass > 1 - top_p. The first token always stays.
    before_BK = top_BK.cumsum(-1) - top_BK
    keep_BK = before_BK < top_p
    keep_BK[:, 0] = True
    probs_BK = top_BK * keep_BK
    return probs_BK / probs_BK.sum(-1, keepdim=True), ids_BK


def next_tokens(logits_BV: Tensor, temperature: float, top_p: float, generator: torch.Generator | None) -> Tensor:
    """One token per row: argmax at temperature 0, else a draw from the tempered nucleus."""
    if temperature == 0:
        return logits_BV.argmax(-1)
    if top_p >= 1.0:
        probs_BV = (logits_BV.float() / temperature).softmax(-1)
        return torch.multinomial(probs_BV, 1, generator=generator).squeeze(1)
    probs_BK, ids_BK = nucleus(logits_BV.float() / temperature, top_p)
    pick_B1 = torch.multinomial(probs_BK, 1, generator=generator)
    return ids_BK.gather(1, pick_B1).squeeze(1)


def _common_head(ids: Sequence[Sequence[int]]) -> int:
    n = min(len(x) for x in ids) - 1  # every row keeps a token to prefill
    first = ids[0]
    for x in ids[1:]:
        i = 0
        while i < n and x[i] == first[i]:
            i += 1
        n = i
    return max(n, 0)


def _buffer_layer_class():
    from transformers.cache_utils import DynamicLayer

    class BufferLayer(DynamicLayer):
        """A DynamicLayer whose keys and values are views of a preallocated buffer: a new
        token is written in place instead of concatenated (which copies the whole layer at
        every step, the largest cost of CPU decoding after the matmuls)."""

        def __init__(self, keys_BHCD: Tensor, values_BHCD: Tensor, length: int):
            super().__init__()
            self._keys, self._values, self._length = keys_BHCD, values_BHCD, length
            self.device, self.is_initialized = keys_BHCD.device, True
            self.keys, self.values = keys_BHCD[:, :, :length], values_BHCD[:, :, :length]

        def update(self, key_states: Tensor, value_states: Tensor, *args, **kwargs):
            end = self._length + key_states.shape[-2]
            self._keys[:, :, self._length:end] = key_states
            self._values[:, :, self._length:end] = value_states
            self._length = end
            self.keys, self.values = self._keys[:, :, :end], self._values[:, :, :end]
            return self.keys, self.values

    return BufferLayer


class _Model:
    """The model's forward with the cache keyword of this transformers version, computing
    the last position's logits only."""

    def __init__(self, model):
        self.model = model
        self.device = next(model.parameters()).device
        params = inspect.signature(model.forward).parameters
        self.cache_kw = "cache" if "cache" in params else "past_key_values"
        keep = next((k for k in ("logits_to_keep", "num_logits_to_keep") if k in params), None)
        self.extra = {keep: 1} if keep else {}

    def __call__(self, ids_BS: Tensor, cache, **kwargs) -> Tensor:
        kwargs = {k: v.to(self.device) for k, v in kwargs.items()}
        out = self.model(input_ids=ids_BS.to(self.device), use_cache=True, **{self.cache_kw: cache}, **self.extra,
                         **kwargs)
        return out.logits[:, -1]


def _left_padded(tails: Sequence[Sequence[int]], width: int, offset: int, pad_id: int):
    """ids [B, width] (tails at the right), their 0/1 mask and position ids from `offset`."""
    B = len(tails)
    ids_BS = torch.full((B, width), pad_id, dtype=torch.long)
    mask_BS = torch.zeros(B, width, dtype=torch.long)
    pos_BS = torch.zeros(B, width, dtype=torch.long)
    for i, t in enumerate(tails):
        ids_BS[i, width - len(t):] = torch.tensor(list(t))
        mask_BS[i, width - len(t):] = 1
        pos_BS[i, width - len(t):] = torch.arange(offset, offset + len(t))
    return ids_BS, mask_BS, pos_BS


PREFILL_ROWS = 16
"""Rows per prefill forward: rows are prefilled in groups of similar length (little padding)."""


@torch.inference_mode()
def sample_batch(model, prompt_ids: Sequence[Sequence[int]], max_new_tokens: int | Sequence[int], temperature: float,
                 top_p: float, seed: int, eos_ids: Sequence[int], pad_id: int) -> list[list[int]]:
    """New tokens for each prompt, up to and without the first end-of-sequence token.

    ``max_new_tokens``: one cap for all rows, or one per row (a row whose cap is reached
    stops, and its list is then exactly that long; a row that ended by itself is shorter)."""
    from transformers import DynamicCache
    from transformers.cache_utils import Cache

    forward = _Model(model)
    B = len(prompt_ids)
    caps_B = torch.tensor([max_new_tokens] * B if isinstance(max_new_tokens, int) else list(max_new_tokens))
    if caps_B.numel() != B:
        raise ValueError(f"max_new_tokens has {caps_B.numel()} caps for {B} prompts")
    caps_B = caps_B.clamp_min(0)
    max_new_tokens = int(caps_B.max()) if B else 0
    if max_new_tokens == 0:
        return [[] for _ in range(B)]
    sliding = any(getattr(DynamicCache(config=model.config), "is_sliding", None) or [False])
    # A cache that drops old tokens cannot be shared or preallocated: one plain prefill.
    P = 0 if sliding else _common_head(prompt_ids)
    head_kv = []
    if P:
        head = DynamicCache(config=model.config)
        forward(torch.tensor([list(prompt_ids[0][:P])]), head)
        head_kv = [(layer.keys, layer.values) for layer in head.layers]
    tails = [list(p[P:]) for p in prompt_ids]
    S = max(len(t) for t in tails)
    mask_BK = torch.cat([torch.ones(B, P, dtype=torch.long), _left_padded(tails, S, P, pad_id)[1]], 1)
    next_pos_B = torch.tensor([P + len(t) for t in tails])
    logits_BV = None
    if sliding:
        cache = DynamicCache(config=model.config)
        ids_BS, _, pos_BS = _left_padded(tails, S, 0, pad_id)
        logits_BV = forward(ids_BS, cache, attention_mask=mask_BK, position_ids=pos_BS)
    else:
        buffers = None
        order = sorted(range(B), key=lambda i: len(tails[i]))
        for start in range(0, B, PREFILL_ROWS):
            rows = order[start:start + PREFILL_ROWS]
            width = max(len(tails[i]) for i in rows)
            ids_bS, mask_bS, pos_bS = _left_padded([tails[i] for i in rows], width, P, pad_id)
            kv = [(k.expand(len(rows), -1, -1, -1), v.expand(len(rows), -1, -1, -1)) for k, v in head_kv]
            part = DynamicCache(ddp_cache_data=kv, config=model.config) if kv else DynamicCache(config=model.config)
            mask_bK = torch.cat([torch.ones(len(rows), P, dtype=torch.long), mask_bS], 1)
            logits_bV = forward(ids_bS, part, attention_mask=mask_bK, position_ids=pos_bS)
            if buffers is None:  # [B, heads, capacity, head_dim] per layer, the head written once
                logits_BV = logits_bV.new_empty(B, logits_bV.shape[-1])
                buffers = [(layer.keys.new_zeros(B, layer.keys.shape[1], P + S + max_new_tokens, layer.keys.shape[3]),
                            layer.values.new_zeros(B, layer.values.shape[1], P + S + max_new_tokens,
                                                   layer.values.shape[3])) for layer in part.layers]
                for (kb, vb), (k, v) in zip(buffers, head_kv):
                    kb[:, :, :P], vb[:, :, :P] = k, v
            idx = torch.tensor(rows)
            for (kb, vb), layer in zip(buffers, part.layers):  # the group's tails, right-aligned at P + S
                kb[idx, :, P + S - width:P + S] = layer.keys[:, :, P:]
                vb[idx, :, P + S - width:P + S] = layer.values[:, :, P:]
            logits_BV[idx.to(logits_BV.device)] = logits_bV
        layer_cls = _buffer_layer_class()
        cache = Cache(layers=[layer_cls(kb, vb, P + S) for kb, vb in buffers])

    generator = torch.Generator(device=logits_BV.device).manual_seed(seed) if temperature > 0 else None
    eos = torch.tensor(sorted(set(eos_ids)), dtype=torch.long)
    done_B = caps_B == 0
    out: list[list[int]] = [[] for _ in range(B)]
    for step in range(max_new_tokens):
        tok_B = next_tokens(logits_BV, temperature, top_p, generator).cpu()
        tok_B[done_B] = pad_id
        finished_B = torch.isin(tok_B, eos) & ~done_B
        for i in (~done_B & ~finished_B).nonzero().squeeze(1).tolist():
            out[i].append(int(tok_B[i]))
        done_B |= finished_B | (caps_B <= step + 1)
        if bool(done_B.all()) or step == max_new_tokens - 1:
            break
        mask_BK = torch.cat([mask_BK, torch.ones(B, 1, dtype=torch.long)], 1)
        logits_BV = forward(tok_B[:, None], cache, attention_mask=mask_BK, position_ids=next_pos_B[:, None])
        next_pos_B += 1
    return out
