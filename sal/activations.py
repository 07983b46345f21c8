"""Residual-stream capture from any HuggingFace decoder-only LM.

Forward pre-hooks on the decoder blocks read each block's input; a forward hook on the last
block reads its output (before the final norm). The pass is cut short by an exception once
the deepest requested point is captured, so later blocks, the final norm and the LM head
never run.
"""

from __future__ import annotations

from typing import Iterable, Sequence

import torch
from torch import nn


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
