"""Residual-stream capture from any HuggingFace decoder-only LM, and the one loop that feeds it.

Forward pre-hooks on the decoder blocks read each block's input; a forward hook on the last
block reads its output (before the final norm). The pass is cut short by an exception once
the deepest requested point is captured, so later blocks, the final norm and the LM head
never run.

Every pass over documents (the streaming trainer, the activation cache, the feature pass)
tokenizes, batches and pads them with :func:`forward_batches` and captures the valid tokens'
residual stream with :func:`valid_activations`.
"""

from __future__ import annotations

from typing import Callable, Iterable, Iterator, NamedTuple, Sequence

import torch
from torch import Tensor, nn
from torch.nn import functional as F
from torch.nn.utils.rnn import pad_sequence


class _StopForward(Exception):
    """Raised inside a hook to abandon the rest of the forward pass."""


def decoder_blocks(model: nn.Module) -> nn.ModuleList:
    """The list of decoder blocks of a causal LM (Llama, Qwen2, Mistral, GPT-2-style...)."""
    base = getattr(model, "base_model", model)
    for path in ("layers", "h", "decoder.layers", "model.layers", "transformer.h"):
        obj = base
        for part in path.split("."):
            obj = getattr(obj, part, None)
            if obj is None:
                break
        if isinstance(obj, nn.ModuleList):
            return obj
    raise TypeError(
        f"Cannot find the decoder blocks of {type(model).__name__}: expected a ModuleList at "
        f"model.model.layers (Llama/Qwen2/Mistral) or model.transformer.h (GPT-2)."
    )


def _backbone(model: nn.Module) -> nn.Module:
    """The transformer without its LM head, so activation work never computes logits."""
    base = getattr(model, "base_model", None)
    return base if base is not None else model


def residual_stream(
    model: nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None,
    layers: Sequence[int],
) -> torch.Tensor:
    """Residual stream at ``layers``: a tensor ``[batch, seq, len(layers), d_model]``.

    Index ``i`` is the input of decoder block ``i``; index ``n_layers`` is the output of the
    last block before the final norm (``output_hidden_states`` gives the *normed* value
    there, which is not what a crosscoder should see).
    """
    blocks = decoder_blocks(model)
    n_layers = len(blocks)
    layers = list(layers)
    if any(i < 0 or i > n_layers for i in layers):
        raise ValueError(f"layers={layers} outside [0, {n_layers}] for a {n_layers}-block model.")
    wanted = set(layers)
    deepest = max(layers)
    captured: dict[int, torch.Tensor] = {}
    handles = []

    def pre_hook(idx):
        def hook(module, args, kwargs):
            hidden = args[0] if args else kwargs["hidden_states"]
            if idx in wanted:
                captured[idx] = hidden
            if idx == deepest:
                raise _StopForward
        return hook

    def post_hook(module, args, output):
        captured[n_layers] = output[0] if isinstance(output, tuple) else output
        raise _StopForward

    for idx in sorted(i for i in wanted if i < n_layers):
        handles.append(blocks[idx].register_forward_pre_hook(pre_hook(idx), with_kwargs=True))
    if deepest == n_layers:
        handles.append(blocks[n_layers - 1].register_forward_hook(post_hook))
    try:
        with torch.no_grad():
            _backbone(model)(input_ids=input_ids, attention_mask=attention_mask, use_cache=False)
    except _StopForward:
        pass
    finally:
        for h in handles:
            h.remove()
    missing = wanted - captured.keys()
    if missing:
        raise RuntimeError(f"Residual-stream points {sorted(missing)} were never reached.")
    return torch.stack([captured[i] for i in layers], dim=2)


def special_token_ids(tokenizer) -> set[int]:
    """Ids never used for training or counting: BOS, EOS, PAD and every other special token."""
    ids = set(getattr(tokenizer, "all_special_ids", []) or [])
    for name in ("bos_token_id", "eos_token_id", "pad_token_id"):
        value = getattr(tokenizer, name, None)
        if value is not None:
            ids.add(int(value))
    return ids


def valid_token_mask(
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None,
    special_ids: Iterable[int],
    drop_first: bool = True,
) -> torch.Tensor:
    """Bool ``[batch, seq]``: positions that are neither padding nor special tokens.

    The first attended position is an attention sink whose residual norm is tens of times
    the others' (SmolLM2, which adds no BOS, shows ~25,000 vs ~200); it would dominate a sparse
    dictionary's loss, so ``drop_first`` removes it even when it is an ordinary token.
    """
    mask = torch.ones_like(input_ids, dtype=torch.bool)
    if attention_mask is not None:
        mask &= attention_mask.bool()
    if drop_first:
        first = mask.int().argmax(dim=1)  # first attended position, left or right padding
        mask[torch.arange(mask.shape[0], device=mask.device), first] = False
    special = torch.tensor(sorted(set(special_ids)), dtype=input_ids.dtype, device=input_ids.device)
    if special.numel():
        mask &= ~torch.isin(input_ids, special)
    return mask


SORT_WINDOW = 8
"""Forward batches whose documents are sorted by length together, in the streaming trainer
and the activation cache: a wider window pads less (the shuffle buffer undoes the order)."""


class ForwardBatch(NamedTuple):
    """One subject-model forward's worth of documents, right-padded to the longest."""

    docs_B: Tensor
    """[B] index of each document in the list given to :func:`forward_batches`."""
    ids_BT: Tensor
    """[B, T] token ids (the tokenizer's pad id past each document's end)."""
    attn_BT: Tensor
    """[B, T] attention mask (1 on real tokens)."""
    valid_BT: Tensor
    """[B, T] bool: the positions that carry activations (see :func:`valid_token_mask`)."""


def tokenize(tokenizer, texts: Sequence[str], max_tokens: int) -> list[Tensor]:
    """Each document's token ids (int64), truncated to ``max_tokens``; no padding."""
    enc = tokenizer(list(texts), truncation=True, max_length=int(max_tokens))
    return [torch.tensor(list(ids), dtype=torch.long) for ids in enc["input_ids"]]


def forward_batches(tokenizer, texts: Sequence[str], max_tokens: int, docs_per_forward: int,
                    special_ids: Iterable[int] | None = None, sort_window: int | None = None,
                    mask_fn: Callable | None = None) -> Iterator[ForwardBatch]:
    """``texts`` in forward batches of ``docs_per_forward`` documents, tokenized lazily.

    ``sort_window=None`` keeps the documents in order (consumers that read results by document
    rely on it). An integer ``w`` tokenizes ``docs_per_forward * w`` documents at a time and
    forwards them longest first, so documents of similar length share a batch: less padding,
    same tokens. Padding is done here, on the right, whatever the tokenizer's ``padding_side``
    (a shared tokenizer is never changed). ``mask_fn``: an injectable :func:`valid_token_mask`.
    """
    mask_fn = mask_fn or valid_token_mask
    step = max(1, int(docs_per_forward))
    window = step * max(1, int(sort_window)) if sort_window is not None else step
    special = special_token_ids(tokenizer) if special_ids is None else set(special_ids)
    pad_id = tokenizer.pad_token_id if getattr(tokenizer, "pad_token_id", None) is not None else 0
    for w in range(0, len(texts), window):
        rows = tokenize(tokenizer, texts[w:w + window], max_tokens)
        lengths = torch.tensor([r.numel() for r in rows], dtype=torch.long)
        order = (torch.argsort(lengths, descending=True, stable=True) if sort_window is not None
                 else torch.arange(len(rows)))
        for i in range(0, len(rows), step):
            sel = order[i:i + step]
            ids_BT = pad_sequence([rows[j] for j in sel], batch_first=True, padding_value=pad_id)
            if ids_BT.shape[1] == 0:  # empty documents only: one pad column keeps the batch maskable
                ids_BT = F.pad(ids_BT, (0, 1), value=pad_id)
            attn_BT = (torch.arange(ids_BT.shape[1]) < lengths[sel, None]).long()
            yield ForwardBatch(w + sel, ids_BT, attn_BT, mask_fn(ids_BT, attn_BT, special))


def valid_activations(model: nn.Module, batch: ForwardBatch, layers: Sequence[int],
                      capture_fn: Callable | None = None) -> Tensor:
    """``[N, L, D]``: the residual stream at ``batch``'s valid positions, in row-major order
    (document by document, position by position), on the model's device."""
    capture_fn = capture_fn or residual_stream
    device = next(model.parameters()).device
    acts_BTLD = capture_fn(model, batch.ids_BT.to(device), batch.attn_BT.to(device), list(layers))
    return acts_BTLD[batch.valid_BT.to(device)]
